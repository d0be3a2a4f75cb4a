"""Training EAGLE-3 heads against the user's own GGUF target (`llama-eagle3 train`).

Stages, each resumable from its files in the output directory:
  prompts.py   the prompts: the user's file, or requests the target writes itself
  distill.py   the target answers them (batched llama.cpp generation): samples.jsonl
  features.py  the target's three hidden states for every token, captured with the
               runtime's own hook: fp16 shards
  vocab.py     the draft vocabulary (most frequent target tokens): d2t
  model.py     the head in torch, with the EAGLE-3 math of eagle3_convert.reference
  trainer.py   training-time-test training, checkpoints, resume, report
"""
