"""Fine-tuning: a dense training forward per family, LoRA and full fine-tuning, data packing with
loss masks, AdamW with warmup schedules, checkpoints that resume bit for bit, and the two ways a
result is saved (merged HF folder, PEFT adapter). See docs/training.md.
"""
