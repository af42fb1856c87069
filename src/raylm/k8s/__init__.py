"""Kubernetes through KubeRay: `raylm k8s render` writes the manifests (a RayCluster sized
by the planner, the serve spec's Secret, the network ConfigMap, the store's claim and the
endpoint's Service) and applies nothing. KubeRay is the engine there, as Ray is on
machines."""
