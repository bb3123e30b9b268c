# syntax=docker/dockerfile:1
# The controller image: `runner-controller serve|listen|provision` (the Deployment passes
# the subcommand as args). After distroless's python3-requirements example:
#
#   python        Debian 12's python3 with a virtualenv at /venv.
#   requirements  the dependency list alone, out of pyproject.toml.
#   build         the dependencies in /venv (pinned by constraints.txt, binary wheels
#                 only), then this project's wheel, built here.
#   (runtime)     distroless python3-debian12 (the same Debian python3, no shell, no
#                 package manager) with /venv copied in and the wheel installed into it,
#                 running as 65532. Nothing is written outside /tmp, so the read-only root
#                 and the /tmp emptyDir of the Deployment suffice.
#
# The release builds it for amd64 and arm64 (.github/workflows/release.yml). Bases are
# pinned by digest; override them only to build from a mirror, e.g.
#   --build-arg BUILD_BASE=<registry>/debian:12-slim@sha256:...
# Offline (no index reachable): put every wheel in a directory, mount it at /wheelhouse
# for the RUN steps and pass --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/wheelhouse
# (`make image` does exactly that with podman; see the README).
ARG BUILD_BASE=docker.io/library/debian:12-slim@sha256:d02c76d82364cedca16ba3ed6f9102406fa9fa8833076a609cabf14270f43dfc
ARG RUNTIME_BASE=gcr.io/distroless/python3-debian12:nonroot@sha256:95f5fa82f7cc7da0e133a8a895900447337ef0830870ad8387eb4c696be17057

FROM ${BUILD_BASE} AS python
# debian:12-slim has no Python: apt brings python3-venv. A base that has it (the offline
# test base, made by debootstrap) goes without apt.
RUN python3 -m venv /venv 2>/dev/null || { \
      rm -rf /venv \
      && apt-get update \
      && apt-get install --yes --no-install-recommends --no-install-suggests python3-venv \
      && rm -rf /var/lib/apt/lists/* \
      && python3 -m venv /venv; \
    }

# Only the dependency list of pyproject.toml: an edit elsewhere in it (tool settings)
# leaves the dependency layers below as they are.
FROM python AS requirements
COPY pyproject.toml /
RUN python3 -c 'import tomllib; print("\n".join(tomllib.load(open("/pyproject.toml", "rb"))["project"]["dependencies"]))' \
      > /requirements.txt

FROM python AS build
# pip reads these from the environment: PyPI by default, or only the mounted wheels.
ARG PIP_NO_INDEX=0
ARG PIP_FIND_LINKS=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# The dependencies first, in their own layer: reused until the list or the pins change.
COPY constraints.txt ./
COPY --from=requirements /requirements.txt ./
RUN /venv/bin/pip install --only-binary=:all: --constraint constraints.txt \
      --requirement requirements.txt
COPY . .
# The project's wheel, built from this source (pure Python: nothing is compiled); its name
# carries the version, which must be the one the label will carry.
ARG VERSION
# PIP_CONSTRAINT pins the build backend too (pip's isolated build reads it).
RUN PIP_CONSTRAINT=/src/constraints.txt /venv/bin/pip wheel --no-deps --wheel-dir /dist . \
    && if [ ! -f "/dist/runner_platform-${VERSION}-py3-none-any.whl" ]; then \
         echo "VERSION build argument '${VERSION}' is not the package's version" \
              "($(ls /dist)): pass --build-arg VERSION=<[project] version of pyproject.toml>" >&2; \
         exit 1; \
       fi

FROM ${RUNTIME_BASE}
# The dependencies: this layer changes only with the pins.
COPY --from=build /venv /venv
# Then the wheel, in small layers of its own (it stays in /dist: the very file released);
# pip also checks every dependency is there, with no index to fetch one from. Exec form:
# the runtime base has no shell.
COPY --from=build /dist/ /dist/
RUN ["/venv/bin/python3", "-m", "pip", "install", "--no-index", "--find-links=/dist", \
     "--disable-pip-version-check", "--no-cache-dir", "--root-user-action=ignore", \
     "runner-platform"]
# No byte-code writes on a read-only root; logs straight to stdout.
ENV PATH=/venv/bin:/usr/local/bin:/usr/bin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# distroless's "nonroot"; the Deployment's securityContext asks for the same uid and gid.
USER 65532:65532
# Declared last: a new revision must not rebuild the layers above.
ARG VERSION
ARG REVISION=unknown
LABEL org.opencontainers.image.title="runner-platform controller" \
      org.opencontainers.image.description="Ephemeral, team-isolated GitHub Actions runners on Kubernetes: webhook router, team verifier, pod provisioner" \
      org.opencontainers.image.source="https://github.com/runner-platform/runner-platform" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
EXPOSE 8080 9102
ENTRYPOINT ["/venv/bin/runner-controller"]
CMD ["serve"]
