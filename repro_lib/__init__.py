"""buildkit-repro lab: run many trials of a flaky BuildKit bug and turn them into evidence."""

__version__ = "0.1.0"

__all__ = ["__version__", "load_results"]


def __getattr__(name: str):
    # Imported lazily so that `import repro_lib` stays cheap for the CLI.
    if name == "load_results":
        from .results import load_results

        return load_results
    raise AttributeError(name)
