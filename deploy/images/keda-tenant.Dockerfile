# keda-tenancy-keda: one tenant's KEDA operator image. KEDA's own /keda (and /keda-adapter),
# unchanged, plus keda-tenancy-reloader as the entrypoint that keeps the operator's
# WATCH_NAMESPACE on exactly the tenant's namespaces:
#   keda-tenancy-reloader --tenant T ... -- /keda --leader-elect ...
#   docker build -f deploy/images/keda-tenant.Dockerfile -t <registry>/keda-tenancy-keda:<version> .
# (build context: the repository root)
ARG KEDA_VERSION=2.20.2
ARG PYTHON_IMAGE=python:3.11-slim

FROM ghcr.io/kedacore/keda:${KEDA_VERSION} AS keda
FROM ghcr.io/kedacore/keda-metrics-apiserver:${KEDA_VERSION} AS keda-adapter

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
COPY --from=keda /keda /keda
COPY --from=keda-adapter /keda-adapter /keda-adapter
ENV PATH=/opt/keda-tenancy/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# KEDA's images run as 65532 (distroless nonroot); so does this one.
USER 65532:65532
EXPOSE 8080 8081 8090 9666
ENTRYPOINT ["keda-tenancy-reloader"]
