"""Container images for the kubelet-backed cluster, built here without a registry or daemon.

The router and tenant images follow deploy/images/*.Dockerfile step by step (dockerfile.py);
their base images and KEDA's upstream images are made locally (bases.py) and every image is
written as an OCI archive for `ctr images import` (oci.py), cached by content (build.py).
"""
