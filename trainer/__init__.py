"""The training stage: LoRA fine-tuning on a pinned NanoFlux dataset version with TRL's SFTTrainer and PEFT (train,
train_config, train_data, adapter_hub, adapter_card, jobs, baseline), its evaluation (evaluation/) and ablation
sweeps (sweep/)."""
