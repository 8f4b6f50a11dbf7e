"""NanoFlux's shared kernel: what every stage (builder/, trainer/, spaces/) uses, and nothing stage-specific.

- `errors`: the one error hierarchy (`NanoFluxError`); the CLI prints any of them as one line.
- `recipe`: YAML recipe + dotted CLI overrides -> a validated config dataclass; the field checks.
- `runfolder`: the run-folder contract (one writer, atomic writes, UTC time).
- `models`: the packaged-model cache (the embedded SmolLM2 as a Hugging Face folder).
- `cli`: the `nanoflux` command, a dispatch table over the stages' `main()`s.

The kernel imports no stage: stages import it.
"""
