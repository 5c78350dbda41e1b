"""Options declared once: the batch options (reproduce, sweep, bisect, bench), the results
store (those and report, evidence) and the BuildKit mode (reproduce, bisect)."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from typing import Any

import click

from ..errors import UsageError

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def store_option(default: str = "data/raw/trials.sqlite") -> Decorator:
    """``--store FILE`` (as ``store_path``, None when not given); ``default`` is what the
    command falls back to under the project root, for the help only."""
    return click.option(
        "--store",
        "store_path",
        default=None,
        type=click.Path(dir_okay=False),
        help=f"Results store (default: {default} under the project root).",
    )


#: ``--mode``: how the container backend runs BuildKit, for a batch or each probe
mode_option: Decorator = click.option(
    "--mode",
    type=click.Choice(["daemonless", "daemon"]),
    default="daemonless",
    show_default=True,
    help="container backend: a fresh buildkitd per try (daemonless, the public script) or one buildkitd per reset cycle (daemon).",
)


def batch_options(
    func: Callable[..., Any] | None = None, *, store: str = "data/raw/trials.sqlite"
) -> Any:
    """Options shared by `reproduce`, `sweep`, `bisect` and `bench`: ``@batch_options``, or
    ``@batch_options(store=...)`` for a command whose results store defaults elsewhere."""
    if func is None:
        return lambda f: batch_options(f, store=store)
    options = [
        click.option(
            "--backend",
            default="container",
            show_default=True,
            help="container: a moby/buildkit image run as the public script does; engine: Docker Engine's built-in BuildKit with an inline cache (more via REPRO_LIB_BACKEND_MODULES).",
        ),
        click.option(
            "--output",
            "output",
            type=click.Choice(["tar", "oci"]),
            default="tar",
            show_default=True,
            help="Result format: a flattened filesystem tarball, or an OCI image tarball whose layers are counted.",
        ),
        click.option(
            "--offline",
            is_flag=True,
            help="Never pull: use local images only and seed the mirror by pushing the scenario's base image from the local engine.",
        ),
        click.option(
            "--no-cleanup",
            is_flag=True,
            help="Keep registries, volumes and files after the run and print where they are (clean later with `repro-lib clean --all`).",
        ),
        click.option(
            "--skip-create-cache",
            is_flag=True,
            help="Do not export a cache; import the one named by --cache-ref (registry/inline) or --cache-dir (local) from an earlier --no-cleanup run.",
        ),
        click.option(
            "--cache-ref",
            default=None,
            help="Registry reference of an existing cache (with --skip-create-cache).",
        ),
        click.option(
            "--cache-dir",
            default=None,
            type=click.Path(file_okay=False),
            help="Directory of an existing local cache (with --skip-create-cache).",
        ),
        click.option(
            "--skip-tests", is_flag=True, help="Only export the cache; run no import tries."
        ),
        click.option(
            "--stop-on-failure",
            is_flag=True,
            help="Stop at the first missing layer (the public script's behaviour); by default the lab keeps going and counts.",
        ),
        click.option(
            "--scenario",
            "scenario",
            default=None,
            type=click.Path(file_okay=False),
            help="A scenario directory: Dockerfile, context files and expected.txt naming the expected paths. Default: the built-in reference scenario.",
        ),
        click.option(
            "--base-image",
            default=None,
            help="Replace the scenario's base image (build-arg BASE_IMAGE; default alpine:latest).",
        ),
        click.option(
            "--registry-image",
            default="registry:2",
            show_default=True,
            help="Image of the cache and mirror registries.",
        ),
        click.option(
            "--privileged/--no-privileged",
            default=None,
            help="Run BuildKit --privileged. Default: only for rootful images; rootless ones use the public script's security options.",
        ),
        click.option(
            "--security-opt",
            multiple=True,
            help="Container security option for BuildKit (repeatable); replaces the defaults (seccomp/apparmor unconfined for rootless).",
        ),
        click.option(
            "--cap-add",
            multiple=True,
            help="Capability to add to the BuildKit container (repeatable), e.g. SYS_ADMIN.",
        ),
        click.option(
            "--cap-drop",
            multiple=True,
            help="Capability to drop from the BuildKit container (repeatable), e.g. SYS_RESOURCE where the engine's host lacks it.",
        ),
        click.option(
            "--rootful-weak-isolation",
            is_flag=True,
            help="WEAKENS ISOLATION. Run a rootful BuildKit image without --privileged, for engines that refuse it: --cap-add ALL --cap-drop SYS_RESOURCE, seccomp, AppArmor and system paths unconfined, and on cgroup-v1 hosts the host's /sys/fs/cgroup mounted read-write. The container gets nearly a privileged container's power over its host; the flags are recorded per trial.",
        ),
        click.option(
            "--buildkitd-flags",
            default="",
            help="Extra buildkitd flags (appended to BUILDKITD_FLAGS).",
        ),
        click.option(
            "--debug-failures",
            is_flag=True,
            help="Run buildkitd with --debug for this batch, so each failure's evidence bundle holds a debug-level daemon log (daemon mode; daemonless builds log into the build log).",
        ),
        click.option(
            "--hub-url",
            default="https://registry-1.docker.io",
            show_default=True,
            help="Upstream registry the mirror proxies when online (a Docker Hub stand-in or a company proxy).",
        ),
        click.option(
            "--allow-prune",
            is_flag=True,
            help="engine backend: allow pruning the builder cache of an engine the lab did not start (destroys its build cache).",
        ),
        click.option(
            "--docker-cli",
            default=None,
            help="engine backend: docker CLI to run `docker build` with (default: the first one that can).",
        ),
        click.option(
            "--engine-host",
            default=None,
            envvar="DOCKER_HOST",
            help="Docker engine to use, e.g. unix:///path/docker.sock (default: $DOCKER_HOST or the local socket).",
        ),
        store_option(store),
        click.option(
            "--build-timeout",
            default=600.0,
            show_default=True,
            type=float,
            help="Seconds one build may take.",
        ),
        click.option(
            "--json",
            "as_json",
            is_flag=True,
            help="Print the summary as one JSON object on the last line of stdout.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def options_from(kwargs: dict[str, Any], **extra: Any):
    from ..batch import BatchOptions

    backend = kwargs["backend"]
    return BatchOptions(
        backend=backend,
        output=kwargs["output"],
        offline=kwargs["offline"],
        no_cleanup=kwargs["no_cleanup"],
        skip_create_cache=kwargs["skip_create_cache"],
        cache_ref=kwargs["cache_ref"],
        cache_dir=kwargs["cache_dir"],
        skip_tests=kwargs["skip_tests"],
        stop_on_failure=kwargs["stop_on_failure"],
        scenario=kwargs["scenario"],
        base_image=kwargs["base_image"],
        registry_image=kwargs["registry_image"],
        privileged=kwargs["privileged"],
        security_opt=list(kwargs["security_opt"]) or None,
        cap_add=list(kwargs["cap_add"]) or None,
        cap_drop=list(kwargs["cap_drop"]) or None,
        rootful_weak_isolation=kwargs["rootful_weak_isolation"],
        buildkitd_flags=kwargs["buildkitd_flags"],
        hub_url=kwargs["hub_url"],
        allow_prune=kwargs["allow_prune"],
        docker_cli=kwargs["docker_cli"],
        build_timeout=kwargs["build_timeout"],
        debug_failures=kwargs["debug_failures"],
        command=shlex.join(["repro-lib", *sys.argv[1:]]),
        **extra,
    )


def sweep_plan(kwargs: dict[str, Any], plan_file: str | None, axes: dict[str, Any]):
    """The plan of a sweep (or a search's probes) from the batch options, ``plan_file``
    and ``axes``; options given on the command line win over the plan file's."""
    from ..batch import BatchOptions
    from ..plan import load_plan, validate_plan

    defaults = BatchOptions()
    batch = {
        "offline": kwargs["offline"] or None,
        "base_image": kwargs["base_image"],
        "registry_image": kwargs["registry_image"]
        if kwargs["registry_image"] != defaults.registry_image
        else None,
        "scenario": kwargs["scenario"],
        "output": kwargs["output"] if kwargs["output"] != defaults.output else None,
        "privileged": kwargs["privileged"],
        "security_opt": list(kwargs["security_opt"]) or None,
        "cap_add": list(kwargs["cap_add"]) or None,
        "cap_drop": list(kwargs["cap_drop"]) or None,
        "rootful_weak_isolation": kwargs["rootful_weak_isolation"] or None,
        "buildkitd_flags": kwargs["buildkitd_flags"] or None,
        "hub_url": kwargs["hub_url"] if kwargs["hub_url"] != defaults.hub_url else None,
        "allow_prune": kwargs["allow_prune"] or None,
        "docker_cli": kwargs["docker_cli"],
        "build_timeout": kwargs["build_timeout"]
        if kwargs["build_timeout"] != defaults.build_timeout
        else None,
        "debug_failures": kwargs["debug_failures"] or None,
    }
    given = {k: v for k, v in {**axes, **batch}.items() if v is not None}
    if kwargs["backend"] != "container" or not plan_file:
        given["backend"] = kwargs["backend"]  # a plan file's backend stands unless one is given
    if plan_file:
        return load_plan(plan_file, **given)
    if given.get("backend", "container") == "container" and "versions" not in given:
        raise UsageError(
            "--versions is required (or a --plan file)", hint="e.g. --versions v0.9.0,v0.9.1"
        )
    return validate_plan(given)
