"""The dataset card template (`dataset_card.md`), shipped as package data so that an installed NanoFlux (a wheel, not a
checkout) publishes with it; `builder/dataset_card.py` renders it with `huggingface_hub`'s `DatasetCard`."""
