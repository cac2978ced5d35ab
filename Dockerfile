# The operator image: `docker build -t matrix-invite-operator .` (or `podman build`; for arm64
# nodes too: docs/install-flux.md, "The image"). The test suite builds it with podman on a base
# made from Debian's packages (tests/node/image.py passes it as PYTHON_IMAGE) and runs it on a
# real node; .github/workflows/release.yml publishes it on tags.
# A patch level with CVE-2024-6923 fixed (3.11.10+): the mailer refuses header values that decode
# to a line break on any Python (mail/send.py), and the image does not rely on that alone.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY operator ./operator
# Every dependency ships wheels, so no compiler is needed even here. pip compiles the .pyc files
# now: the running container has a read-only root filesystem and never writes them.
RUN /opt/venv/bin/pip install --no-warn-script-location . \
 && /opt/venv/bin/pip uninstall --yes pip setuptools wheel \
 && /opt/venv/bin/matrix-invite-operator --version

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="matrix-invite-operator" \
      org.opencontainers.image.description="Invitations in Git become MAS registration tokens, Secrets and invitation mails" \
      org.opencontainers.image.licenses="Apache-2.0"
# The base's own pip and the wheels ensurepip and venv install it from go as well (before PATH
# names the virtualenv's python): nothing in the running image can install packages.
RUN if python -m pip --version >/dev/null 2>&1; then \
      python -m pip uninstall --yes --quiet pip setuptools wheel; fi \
 && find / -xdev \( -name 'pip-*.whl' -o -name 'setuptools-*.whl' -o -name 'wheel-*.whl' \) -delete \
 && find / -xdev \( -name pip -o -name 'pip3*' \) -path '*/bin/*' -delete
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH
# Only the virtualenv: no pip, no build tools, no source tree.
COPY --from=build /opt/venv /opt/venv
# A numeric user, so that Kubernetes can check runAsNonRoot without /etc/passwd.
USER 65532:65532
WORKDIR /tmp
EXPOSE 8080 9090
ENTRYPOINT ["matrix-invite-operator"]
CMD ["run"]
