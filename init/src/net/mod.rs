//! Network bring-up: a sans-IO DHCPv4 client and the plan that configures the kernel.
