//! Which NIC's result to configure when several NICs run DHCP (and IPv6
//! autoconfiguration) at once: a pure decision fed with what arrived and
//! when, so the timing rules are tested without a network.
//!
//! The rules: the `BOOTIF=` NIC's IPv4 lease is taken as soon as it comes.
//! Another NIC's lease waits up to a short grace for it, unless the BOOTIF
//! NIC is known to be out (no carrier within the link timeout, or its DHCP
//! failed); without `BOOTIF=` the first lease is taken at once. An IPv6
//! setup is taken only when no IPv4 lease came within a grace after it, so
//! dual-stack networks deploy over IPv4 as before and IPv6-only ones work.

use std::time::Duration;

use super::dhcp::Lease;
use super::ipv6::Ipv6Setup;

/// What one NIC got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offer {
    Ipv4(Lease),
    Ipv6(Ipv6Setup),
}

/// An [`Offer`] on a named NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub interface: String,
    pub mac: [u8; 6],
    pub offer: Offer,
}

impl Candidate {
    fn is_ipv4(&self) -> bool {
        matches!(self.offer, Offer::Ipv4(_))
    }
}

/// What [`LeaseChoice::decide`] says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Configure this one now.
    Take(Candidate),
    /// Ask again at this time (or when something new arrives).
    WaitUntil(Duration),
    /// Nothing to choose from yet.
    Wait,
}

/// The offers seen so far, with the time each arrived.
#[derive(Debug, Clone)]
pub struct LeaseChoice {
    boot_mac: Option<[u8; 6]>,
    bootif_grace: Duration,
    ipv4_grace: Duration,
    offers: Vec<(Duration, Candidate)>,
    boot_nic_out: bool,
}

impl LeaseChoice {
    /// `bootif_grace`: how long another NIC's lease waits for the BOOTIF
    /// NIC's; `ipv4_grace`: how long an IPv6 setup waits for any IPv4 lease.
    pub fn new(boot_mac: Option<[u8; 6]>, bootif_grace: Duration, ipv4_grace: Duration) -> Self {
        Self {
            boot_mac,
            bootif_grace,
            ipv4_grace,
            offers: Vec::new(),
            boot_nic_out: false,
        }
    }

    /// Records what `candidate` got at `now`.
    pub fn offer(&mut self, now: Duration, candidate: Candidate) {
        self.offers.push((now, candidate));
    }

    /// The BOOTIF NIC will not answer (no carrier, or its DHCP gave up):
    /// waiting for it is pointless.
    pub fn boot_nic_out(&mut self) {
        self.boot_nic_out = true;
    }

    /// Decides at `now`.
    pub fn decide(&self, now: Duration) -> Decision {
        let from_boot_nic = |c: &Candidate| self.boot_mac == Some(c.mac);
        let ipv4 = self.offers.iter().filter(|(_, c)| c.is_ipv4());
        if let Some((_, boot)) = ipv4.clone().find(|(_, c)| from_boot_nic(c)) {
            return Decision::Take(boot.clone());
        }
        if let Some((at, first)) = ipv4.clone().next() {
            let deadline = *at + self.bootif_grace;
            if self.boot_mac.is_none() || self.boot_nic_out || now >= deadline {
                return Decision::Take(first.clone());
            }
            return Decision::WaitUntil(deadline);
        }
        let ipv6 = || self.offers.iter().filter(|(_, c)| !c.is_ipv4());
        let Some((first_at, first)) = ipv6().next() else {
            return Decision::Wait;
        };
        let deadline = *first_at + self.ipv4_grace;
        if now < deadline {
            return Decision::WaitUntil(deadline);
        }
        let preferred = ipv6()
            .find(|(_, c)| from_boot_nic(c))
            .map_or(first, |(_, c)| c);
        Decision::Take(preferred.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::ipv6::Ipv6Origin;
    use std::net::Ipv4Addr;

    const BOOT: [u8; 6] = [0x52, 0x54, 0, 0, 0, 2];
    const OTHER: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];
    const GRACE: Duration = Duration::from_secs(2);
    const V4_GRACE: Duration = Duration::from_secs(3);

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    fn v4(interface: &str, mac: [u8; 6], last: u8) -> Candidate {
        Candidate {
            interface: interface.into(),
            mac,
            offer: Offer::Ipv4(Lease {
                address: Ipv4Addr::new(10, 0, 2, last),
                prefix_len: 24,
                router: None,
                dns_servers: Vec::new(),
                server: Ipv4Addr::new(10, 0, 2, 2),
                lease_duration: None,
                domain: None,
                hostname: None,
            }),
        }
    }

    fn v6(interface: &str, mac: [u8; 6]) -> Candidate {
        Candidate {
            interface: interface.into(),
            mac,
            offer: Offer::Ipv6(Ipv6Setup {
                interface: interface.into(),
                address: "fec0::1".parse().unwrap(),
                prefix_len: 64,
                origin: Ipv6Origin::Slaac,
                router: "fe80::2".parse().unwrap(),
                dns_servers: Vec::new(),
            }),
        }
    }

    fn taken(decision: Decision) -> String {
        match decision {
            Decision::Take(c) => c.interface,
            other => panic!("expected a choice, got {other:?}"),
        }
    }

    #[test]
    fn without_bootif_the_first_lease_wins_at_once() {
        let mut choice = LeaseChoice::new(None, GRACE, V4_GRACE);
        assert_eq!(choice.decide(ms(0)), Decision::Wait);
        choice.offer(ms(300), v4("eth1", BOOT, 16));
        choice.offer(ms(300), v4("eth0", OTHER, 15));
        assert_eq!(taken(choice.decide(ms(300))), "eth1");
    }

    #[test]
    fn the_bootif_lease_wins_whenever_it_comes_within_the_grace() {
        let mut choice = LeaseChoice::new(Some(BOOT), GRACE, V4_GRACE);
        choice.offer(ms(100), v4("eth0", OTHER, 15));
        assert_eq!(choice.decide(ms(100)), Decision::WaitUntil(ms(2100)));
        assert_eq!(choice.decide(ms(1500)), Decision::WaitUntil(ms(2100)));
        choice.offer(ms(1600), v4("eth1", BOOT, 16));
        assert_eq!(taken(choice.decide(ms(1600))), "eth1");
    }

    #[test]
    fn another_lease_is_taken_after_the_grace_or_when_bootif_is_out() {
        let mut choice = LeaseChoice::new(Some(BOOT), GRACE, V4_GRACE);
        choice.offer(ms(100), v4("eth0", OTHER, 15));
        assert_eq!(taken(choice.decide(ms(2100))), "eth0");

        let mut choice = LeaseChoice::new(Some(BOOT), GRACE, V4_GRACE);
        choice.offer(ms(100), v4("eth0", OTHER, 15));
        choice.boot_nic_out();
        assert_eq!(taken(choice.decide(ms(100))), "eth0");
    }

    #[test]
    fn the_bootif_lease_first_is_taken_at_once() {
        let mut choice = LeaseChoice::new(Some(BOOT), GRACE, V4_GRACE);
        choice.offer(ms(100), v4("eth1", BOOT, 16));
        assert_eq!(taken(choice.decide(ms(100))), "eth1");
    }

    #[test]
    fn ipv6_waits_for_ipv4_then_wins_alone() {
        let mut choice = LeaseChoice::new(None, GRACE, V4_GRACE);
        choice.offer(ms(2000), v6("eth0", OTHER));
        assert_eq!(choice.decide(ms(2000)), Decision::WaitUntil(ms(5000)));
        assert_eq!(taken(choice.decide(ms(5000))), "eth0");

        // Dual stack: the IPv4 lease within the grace wins.
        let mut choice = LeaseChoice::new(None, GRACE, V4_GRACE);
        choice.offer(ms(2000), v6("eth0", OTHER));
        choice.offer(ms(2500), v4("eth1", BOOT, 16));
        let Decision::Take(chosen) = choice.decide(ms(2500)) else {
            panic!("no choice");
        };
        assert!(chosen.is_ipv4());
    }

    #[test]
    fn ipv6_prefers_the_bootif_nic_too() {
        let mut choice = LeaseChoice::new(Some(BOOT), GRACE, V4_GRACE);
        choice.offer(ms(1000), v6("eth0", OTHER));
        choice.offer(ms(1200), v6("eth1", BOOT));
        assert_eq!(choice.decide(ms(3000)), Decision::WaitUntil(ms(4000)));
        assert_eq!(taken(choice.decide(ms(4000))), "eth1");
    }
}
