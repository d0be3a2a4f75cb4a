"""`python -m llama_eagle3.server`: llama-cpp-python's OpenAI-compatible server, with EAGLE-3.

Accepts everything `python -m llama_cpp.server` accepts (command-line settings, or
`--config_file` JSON/YAML with several models) plus, per model:

    eagle3_head        an EAGLE-3 head: GGUF path, HF head directory or hub repo id "org/name[@rev]"
                       (converted against the model once, cached): that model decodes speculatively
    eagle3_draft_max   longest draft per round (default 4)
    eagle3_adaptive    choose each round's draft length by measured cost (default true)
    eagle3_p_min       head confidence cut-off (default 0.5)
    eagle3_capture     "auto" | "hook" | "builtin"
    eagle3_tree_width  > 1: draft trees of this width are a candidate (default 1: chains)
    eagle3_tree_nodes  node budget of a tree (default 3 x eagle3_draft_max)

A model with a head gets flash attention unless the settings say otherwise (greedy output
is then identical to plain decoding). GET /v1/eagle3/stats returns the loaded model's
speculation counters (llama_eagle3.Llama.speculative_stats()).

The server itself (routes, request queueing, streaming, logprobs) is llama-cpp-python's:
this module only builds llama_eagle3.Llama where a model has a head.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any, Literal, Optional

try:
    import uvicorn
    from pydantic import Field
    from llama_cpp.server import app as server_app
    from llama_cpp.server import model as server_model
    from llama_cpp.server.cli import add_args_from_model, parse_model_from_args
    from llama_cpp.server.settings import ModelSettings, ServerSettings
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError(f"the server needs llama-cpp-python's server extras ({e.name} is missing): "
                      f"pip install 'llama-eagle3[server]'") from None

import llama_cpp

from .llama import Llama


class Eagle3ModelSettings(ModelSettings):
    eagle3_head: Optional[str] = Field(default=None, description="EAGLE-3 head (speculative decoding): GGUF, HF "
                                                                     "head directory or hub repo id org/name[@rev]")
    eagle3_draft_max: int = Field(default=4, ge=0, description="Longest EAGLE-3 draft per round")
    eagle3_adaptive: bool = Field(default=True, description="Choose each round's draft length by measured cost")
    eagle3_p_min: float = Field(default=0.5, ge=0.0, le=1.0, description="Stop a draft below this head confidence")
    eagle3_capture: Literal["auto", "hook", "builtin"] = Field(default="auto", description="Hidden-state capture")
    eagle3_tree_width: int = Field(default=1, ge=1, le=8, description="Draft-tree width (1: chains only)")
    eagle3_tree_nodes: Optional[int] = Field(default=None, ge=1, le=63, description="Draft-tree node budget")


class Eagle3Settings(ServerSettings, Eagle3ModelSettings):
    pass


class Eagle3ConfigFileSettings(ServerSettings):
    models: list[Eagle3ModelSettings] = Field(default=[], description="Model configs")


class _WithLlama:
    """llama_cpp's namespace as the model loader sees it, with Llama replaced."""

    def __init__(self, factory: Any):
        self.Llama = factory

    def __getattr__(self, name: str) -> Any:
        return getattr(llama_cpp, name)


_loader_lock = threading.Lock()


class Eagle3LlamaProxy(server_model.LlamaProxy):
    @staticmethod
    def load_llama_from_model_settings(settings: ModelSettings) -> llama_cpp.Llama:
        head = getattr(settings, "eagle3_head", None)
        if head is None:
            return server_model.LlamaProxy.load_llama_from_model_settings(settings)

        class Configured(Llama):
            """Llama with this model's EAGLE-3 settings; a class, so that the loader's
            Llama.from_pretrained (hf_model_repo_id) builds one too."""

            def __init__(self, *args: Any, **kwargs: Any):
                if "flash_attn" not in settings.model_fields_set:
                    kwargs["flash_attn"] = True
                super().__init__(*args, eagle3_head=head, eagle3_draft_max=settings.eagle3_draft_max,
                                 eagle3_adaptive=settings.eagle3_adaptive, eagle3_p_min=settings.eagle3_p_min,
                                 eagle3_capture=settings.eagle3_capture, eagle3_tree_width=settings.eagle3_tree_width,
                                 eagle3_tree_nodes=settings.eagle3_tree_nodes, **kwargs)

        make = Configured

        # llama-cpp-python's loader maps every setting (chat format, kv overrides, LoRA, ...) onto
        # llama_cpp.Llama(...): let it, with our class in its place
        with _loader_lock:
            saved = server_model.llama_cpp
            server_model.llama_cpp = _WithLlama(make)
            try:
                return server_model.LlamaProxy.load_llama_from_model_settings(settings)
            finally:
                server_model.llama_cpp = saved


def create_app(server_settings: ServerSettings, model_settings: list[Eagle3ModelSettings]):
    """llama_cpp.server.app.create_app with EAGLE-3 models and the stats route."""
    server_app.LlamaProxy = Eagle3LlamaProxy  # set_llama_proxy() builds the proxy from this name
    app = server_app.create_app(server_settings=server_settings, model_settings=model_settings)

    @app.get("/v1/eagle3/stats", tags=["EAGLE-3"])
    def eagle3_stats() -> dict:
        proxy = server_app._llama_proxy
        llm = getattr(proxy, "_current_model", None) if proxy is not None else None
        alias = getattr(proxy, "_current_model_alias", None) if proxy is not None else None
        if isinstance(llm, Llama) and llm.is_speculative:
            return {"model": alias, "speculative": True, "stats": llm.speculative_stats()}
        return {"model": alias, "speculative": False, "stats": None}

    return app


def parse(argv: Optional[list[str]] = None) -> tuple[ServerSettings, list[Eagle3ModelSettings]]:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m llama_eagle3.server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args_from_model(parser, Eagle3Settings)
    parser.add_argument("--config_file", type=str, help="Path to a config file to load.")
    args = parser.parse_args(argv)
    config_file = os.environ.get("CONFIG_FILE", args.config_file)
    if config_file:
        if not os.path.exists(config_file):
            parser.error(f"config file {config_file} not found")
        text = open(config_file, "rb").read()
        if config_file.endswith((".yaml", ".yml")):
            import json

            import yaml

            text = json.dumps(yaml.safe_load(text))
        cfg = Eagle3ConfigFileSettings.model_validate_json(text)
        return ServerSettings.model_validate(cfg.model_dump(exclude={"models"})), cfg.models
    if args.model is None:
        parser.error("give --model (and --eagle3_head), or --config_file")
    return parse_model_from_args(ServerSettings, args), [parse_model_from_args(Eagle3ModelSettings, args)]


def main(argv: Optional[list[str]] = None) -> None:
    try:
        server_settings, model_settings = parse(argv)
    except ValueError as e:  # pydantic validation errors
        sys.exit(f"llama_eagle3.server: {e}")
    app = create_app(server_settings, model_settings)
    uvicorn.run(app, host=os.getenv("HOST", server_settings.host), port=int(os.getenv("PORT", server_settings.port)),
                ssl_keyfile=server_settings.ssl_keyfile, ssl_certfile=server_settings.ssl_certfile)


if __name__ == "__main__":
    main()
