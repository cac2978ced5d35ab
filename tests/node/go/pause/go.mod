// The Pod sandbox's "pause" process for the test node (tests/node/build.py): registry.k8s.io is
// not reachable here, so the node's containerd gets this one as its sandbox image.
module matrix-invite-operator/tests/node/pause

go 1.25.0
