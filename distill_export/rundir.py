"""The run directory: where every stage reads its inputs and writes its outputs.

Layout: config.yaml, teacher.pt, baseline.pt, student.pt, student*.onnx,
report.json (each stage updates its own keys), report.md, report.html, plots/.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from distill_export.config import RunConfig, config_from_dict
from distill_export.errors import ConfigError
from distill_export.files import ensure_writable_dir, write_json, write_text


def default_run_dir() -> Path:
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


@dataclass
class RunDir:
    path: Path

    @classmethod
    def create(cls, path: str | Path | None, fresh: bool = False) -> "RunDir":
        """fresh: refuse a directory that already holds a run, rather than mixing two runs."""
        target = Path(path or default_run_dir())
        if fresh and ((target / "report.json").exists() or (target / "config.yaml").exists()):
            raise ConfigError(f"--out {target} already holds a run; choose a new --out or delete it")
        return cls(ensure_writable_dir(target))

    @classmethod
    def existing(cls, path: str | Path) -> "RunDir":
        path = Path(path)
        if not (path / "config.yaml").is_file():
            raise ConfigError(f"{path} is not a run directory (no config.yaml); run `distill-export run` or `train-teacher` first")
        return cls(path)

    def file(self, name: str) -> Path:
        return self.path / name

    def require(self, name: str, stage: str) -> Path:
        p = self.file(name)
        if not p.exists():
            raise ConfigError(f"{p} is missing; run `distill-export {stage} {self.path}` first")
        return p

    def save_config(self, config: RunConfig) -> None:
        write_text(self.file("config.yaml"), yaml.safe_dump(config.to_dict(), sort_keys=False))

    def load_config(self) -> RunConfig:
        from distill_export.config import read_yaml

        path = self.file("config.yaml")
        data = read_yaml(path, what="run config")  # bounded safe YAML; a corrupt file is named in one line
        try:
            return config_from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def load_report(self) -> dict:
        p = self.file("report.json")
        if not p.exists():
            return {}
        try:
            report = json.loads(p.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
            where = f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
            raise ConfigError(f"{p} is corrupt (not valid JSON{where}); restore it or re-run the stage "
                              "that writes it") from None
        except RecursionError:
            raise ConfigError(f"{p} is corrupt (nested too deeply)") from None
        if not isinstance(report, dict):
            raise ConfigError(f"{p} is corrupt: expected a JSON object, got {type(report).__name__}")
        return report

    def update_report(self, **sections) -> dict:
        """Merge top-level sections into report.json (dicts merge one level deep)."""
        report = self.load_report()
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(report.get(key), dict):
                report[key].update(value)
            else:
                report[key] = value
        write_json(self.file("report.json"), report)
        return report
