"""mvm.backends.image: the offline image assembler (an ext4 rootfs from an ImageSpec with
this host's busybox, agent and kernel), its checks and its cache key."""
