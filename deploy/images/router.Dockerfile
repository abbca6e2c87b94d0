# keda-tenancy-router: the external-metrics APIService backend.
#   docker build -f deploy/images/router.Dockerfile -t <registry>/keda-tenancy-router:<version> .
# (build context: the repository root)
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/keda-tenancy
WORKDIR /src
COPY pyproject.toml README.md ./
COPY router/ router/
COPY controller/ controller/
COPY reloader/ reloader/
COPY tenancy_common/ tenancy_common/
COPY controller/ controller/
COPY operator_pod/ operator_pod/
RUN /opt/keda-tenancy/bin/pip install '.[fast]' \
 && /opt/keda-tenancy/bin/python -m compileall -q /opt/keda-tenancy

FROM ${PYTHON_IMAGE}
COPY --from=build /opt/keda-tenancy /opt/keda-tenancy
ENV PATH=/opt/keda-tenancy/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Non-root, numeric (runAsNonRoot can verify it); the chart also mounts /tmp as an emptyDir.
USER 65532:65532
EXPOSE 6443 8080
ENTRYPOINT ["keda-tenancy-router"]
