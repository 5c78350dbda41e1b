"""buildkit-repro lab: run many trials of a flaky BuildKit bug and turn them into evidence."""

__version__ = "0.1.0"

__all__ = ["__version__", "load_results"]


def __getattr__(name: str):
    if name == "load_results":
        from .results import load_results  # why: `import repro_lib` stays cheap for the CLI

        return load_results
    raise AttributeError(name)
