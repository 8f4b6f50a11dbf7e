"""LoRA fine-tuning on a pinned NanoFlux dataset version with TRL's SFTTrainer and PEFT (`trainer/train.py`)."""
