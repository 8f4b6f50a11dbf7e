"""NanoFlux dataset builder: Attacker / Defender / tool-augmented Judge rounds with novelty filtering."""
