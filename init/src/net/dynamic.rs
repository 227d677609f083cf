//! The dynamic setup: DHCPv4 on every NIC as it gets carrier and IPv6
//! (router advertisements, DHCPv6) on all of them at once, each worker
//! reporting to one loop that chooses as [`super::choice`] says.

use std::collections::HashMap;
use std::fs;
use std::net::Ipv6Addr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::apply::{apply, describe_lease, write_resolv_conf};
use super::dhcp_worker::{dhcp_on, random_xid};
use super::links::{
    CARRIER_POLL, describe_interfaces, ethernet_interfaces, format_mac, list_interfaces,
};
use super::{
    Candidate, Configured, Decision, Dhcp6Client, Ipv6Step, LeaseChoice, Offer, config, ipv6, sys,
};

/// How long a lease from another NIC waits for the `BOOTIF=` NIC's own.
const BOOTIF_GRACE: Duration = Duration::from_secs(2);

/// How long a usable IPv6 setup waits for an IPv4 lease, which wins, so a
/// dual-stack network deploys over IPv4 as before.
const IPV4_GRACE: Duration = Duration::from_secs(3);

/// Router solicitations are repeated this often until an advertisement comes.
const SOLICIT_INTERVAL: Duration = Duration::from_secs(1);

/// After this long with a router advertisement but no usable setup, the
/// IPv6 worker logs what it sees.
const IPV6_STUCK: Duration = Duration::from_secs(10);

/// How often the IPv6 worker looks at the kernel's addresses and routes.
const IPV6_POLL: Duration = Duration::from_millis(200);

/// What the per-NIC workers report to [`bring_up_dynamic`].
enum Event {
    Offer(Candidate),
    Ipv4Failed { interface: String, error: String },
}

/// DHCP on every NIC with carrier, IPv6 on all of them, one result chosen.
pub(super) fn bring_up_dynamic(
    sysfs: &Path,
    boot_mac: Option<[u8; 6]>,
    link_timeout: Duration,
    dhcp_timeout: Duration,
) -> Result<Configured> {
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    // Workers still running when a choice is made see `stop`; the guard sets
    // it on every return, errors included.
    let _stop_workers = StopOnDrop(Arc::clone(&stop));
    let (events, received) = mpsc::channel();
    let mut choice = LeaseChoice::new(boot_mac, BOOTIF_GRACE, IPV4_GRACE);

    let nics: Vec<(String, [u8; 6])> =
        ethernet_interfaces(&list_interfaces(sysfs).context("listing /sys/class/net")?)
            .iter()
            .filter_map(|i| Some((i.name.clone(), i.mac?)))
            .collect();
    let ipv6_deadline = start + link_timeout + dhcp_timeout;
    {
        let (nics, events, stop) = (nics.clone(), events.clone(), Arc::clone(&stop));
        std::thread::Builder::new()
            .name("ipv6".into())
            .spawn(move || watch_ipv6(&nics, &events, &stop, ipv6_deadline))
            .context("starting the IPv6 thread")?;
    }

    let mut started: Vec<String> = Vec::new();
    let mut failed: Vec<String> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    let mut link_wait_over = false;
    let mut first_link = None;
    loop {
        let now = start.elapsed();
        if !link_wait_over {
            let interfaces = list_interfaces(sysfs).context("listing /sys/class/net")?;
            for nic in ethernet_interfaces(&interfaces) {
                let (Some(mac), true) = (nic.mac, nic.carrier) else {
                    continue;
                };
                if !started.contains(&nic.name) {
                    first_link.get_or_insert_with(crate::timeline::since_boot);
                    started.push(nic.name.clone());
                    spawn_dhcp(&nic.name, mac, dhcp_timeout, &stop, &events)?;
                }
            }
            let boot_nic_up = boot_mac.is_some_and(|boot| {
                ethernet_interfaces(&interfaces)
                    .iter()
                    .any(|i| i.mac == Some(boot) && i.carrier)
            });
            let all_up = ethernet_interfaces(&interfaces).iter().all(|i| i.carrier);
            if all_up || now >= link_timeout {
                link_wait_over = true;
                if started.is_empty() {
                    bail!(
                        "no network interface with carrier after {:.1} s (found: {}); \
                         check the cables, or wait longer with imprint.link-timeout=",
                        link_timeout.as_secs_f64(),
                        describe_interfaces(&interfaces)
                    );
                }
                if let Some(boot) = boot_mac.filter(|_| !boot_nic_up) {
                    log::warn!(
                        "net: the BOOTIF NIC {} has no carrier after {:.1} s, not waiting for it",
                        format_mac(&boot),
                        link_timeout.as_secs_f64()
                    );
                    choice.boot_nic_out();
                }
            }
        }
        let wake = match choice.decide(now) {
            Decision::Take(candidate) => {
                stop.store(true, Ordering::SeqCst);
                let mut configured = configure(candidate)?;
                configured.link_up = first_link;
                return Ok(configured);
            }
            Decision::WaitUntil(at) => Some(at),
            Decision::Wait => None,
        };
        if !started.is_empty() && failed.len() == started.len() && link_wait_over {
            // Every DHCP client gave up; IPv6 had as long to answer.
            bail!("{}", errors.join("; "));
        }
        let mut wait = wake.unwrap_or(Duration::MAX).saturating_sub(now);
        if !link_wait_over {
            wait = wait.min(CARRIER_POLL);
        }
        let wait = wait
            .min(link_timeout + dhcp_timeout)
            .max(Duration::from_millis(1));
        match received.recv_timeout(wait) {
            Ok(Event::Offer(candidate)) => choice.offer(start.elapsed(), candidate),
            Ok(Event::Ipv4Failed { interface, error }) => {
                log::warn!("{error}");
                if boot_mac.is_some_and(|boot| {
                    nics.iter()
                        .any(|(name, mac)| *name == interface && *mac == boot)
                }) {
                    choice.boot_nic_out();
                }
                failed.push(interface);
                errors.push(error);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("the network workers all stopped"),
        }
        if start.elapsed() >= link_timeout + dhcp_timeout + IPV4_GRACE {
            bail!(
                "no DHCP lease and no IPv6 address after {} s",
                (link_timeout + dhcp_timeout).as_secs()
            );
        }
    }
}

/// Sets `stop` when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Configures the chosen NIC (IPv6 is configured already: the kernel did
/// SLAAC, or the DHCPv6 worker added its address) and writes resolv.conf.
fn configure(candidate: Candidate) -> Result<Configured> {
    let Candidate {
        interface,
        mac,
        offer,
    } = candidate;
    match offer {
        Offer::Ipv4(lease) => {
            apply(&config::plan(&interface, &lease), Path::new("/"))?;
            log::info!(
                "dhcp: {interface} ({}) leased {}",
                format_mac(&mac),
                describe_lease(&lease)
            );
            Ok(Configured {
                interface,
                mac,
                lease: Some(lease),
                ipv6: None,
                link_up: None,
            })
        }
        Offer::Ipv6(setup) => {
            write_resolv_conf(Path::new("/"), &setup.resolv_conf())?;
            log::info!("net: using {interface} over IPv6: {}", setup.describe());
            Ok(Configured {
                interface,
                mac,
                lease: None,
                ipv6: Some(setup),
                link_up: None,
            })
        }
    }
}

fn spawn_dhcp(
    name: &str,
    mac: [u8; 6],
    timeout: Duration,
    stop: &Arc<AtomicBool>,
    events: &mpsc::Sender<Event>,
) -> Result<()> {
    let thread_name = format!("dhcp-{name}");
    let (name, stop, events) = (name.to_owned(), Arc::clone(stop), events.clone());
    std::thread::Builder::new()
        .name(thread_name.clone())
        .spawn(move || {
            let event = match dhcp_on(&name, mac, timeout, &stop) {
                Ok(lease) => Event::Offer(Candidate {
                    interface: name,
                    mac,
                    offer: Offer::Ipv4(lease),
                }),
                Err(e) => Event::Ipv4Failed {
                    interface: name,
                    error: format!("{e:#}"),
                },
            };
            // The receiver is gone once a choice was made.
            let _ = events.send(event);
        })
        .with_context(|| format!("starting {thread_name}"))?;
    Ok(())
}

/// Follows IPv6 on every NIC until `stop` or `deadline`: solicits router
/// advertisements, reads them (managed flag, RDNSS), runs DHCPv6 where the
/// router says managed, and reports each NIC that becomes usable.
fn watch_ipv6(
    nics: &[(String, [u8; 6])],
    events: &mpsc::Sender<Event>,
    stop: &AtomicBool,
    deadline: Instant,
) {
    let socket = match sys::Icmp6Socket::open() {
        Ok(socket) => socket,
        Err(e) => {
            log::info!("net: no IPv6 ({e})");
            return;
        }
    };
    let indexes: Vec<(String, [u8; 6], u32)> = nics
        .iter()
        .filter_map(|(name, mac)| Some((name.clone(), *mac, sys::interface_index(name).ok()?)))
        .collect();
    let mut adverts: HashMap<String, ipv6::RouterAdvert> = HashMap::new();
    let mut leases: HashMap<String, (Ipv6Addr, Vec<Ipv6Addr>)> = HashMap::new();
    let mut dhcp6_started: Vec<String> = Vec::new();
    let mut reported: Vec<String> = Vec::new();
    let mut last_solicit: HashMap<String, Instant> = HashMap::new();
    let mut advert_seen: HashMap<String, Instant> = HashMap::new();
    let mut explained: Vec<String> = Vec::new();
    let (dhcp6_done, dhcp6_results) = mpsc::channel::<(String, Ipv6Addr, Vec<Ipv6Addr>)>();
    let mut buf = vec![0u8; 1500];
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        match socket.recv_timeout(&mut buf, IPV6_POLL) {
            Ok(Some((len, scope))) => {
                if let (Some(advert), Some((name, _, _))) = (
                    ipv6::parse_router_advert(buf.get(..len).unwrap_or_default()),
                    indexes.iter().find(|(_, _, index)| *index == scope),
                ) {
                    if !adverts.contains_key(name) {
                        advert_seen.insert(name.clone(), Instant::now());
                        log::info!(
                            "net: {name} router advertisement{}{}",
                            if advert.managed { ", managed" } else { "" },
                            if advert.router_lifetime == 0 {
                                ", not a default router"
                            } else {
                                ""
                            }
                        );
                    }
                    adverts.insert(name.clone(), advert);
                }
            }
            Ok(None) => {}
            Err(e) => log::debug!("net: icmpv6: {e}"),
        }
        while let Ok((name, address, dns)) = dhcp6_results.try_recv() {
            leases.insert(name, (address, dns));
        }
        let addresses =
            ipv6::parse_if_inet6(&fs::read_to_string("/proc/net/if_inet6").unwrap_or_default());
        let routes = fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
        for (name, mac, index) in &indexes {
            if reported.contains(name) {
                continue;
            }
            match ipv6::ipv6_step(
                name,
                adverts.get(name),
                &addresses,
                &routes,
                leases.get(name),
            ) {
                Ipv6Step::Solicit => {
                    if last_solicit
                        .get(name)
                        .is_none_or(|at| at.elapsed() >= SOLICIT_INTERVAL)
                    {
                        last_solicit.insert(name.clone(), Instant::now());
                        // Fails until the link-local address passed DAD.
                        if let Err(e) = socket.send_to_routers(&ipv6::router_solicitation(), *index)
                        {
                            log::debug!("net: router solicitation on {name}: {e}");
                        }
                    }
                }
                Ipv6Step::RunDhcpv6 => {
                    let link_local = addresses
                        .iter()
                        .find(|a| a.interface == *name && a.is_usable_link_local());
                    if let (Some(link_local), false) = (link_local, dhcp6_started.contains(name)) {
                        dhcp6_started.push(name.clone());
                        let (name, mac, index) = (name.clone(), *mac, *index);
                        let (link_local, done) = (link_local.address, dhcp6_done.clone());
                        let timeout = deadline.saturating_duration_since(Instant::now());
                        let _ = std::thread::Builder::new()
                            .name(format!("dhcpv6-{name}"))
                            .spawn(move || {
                                match dhcp6_on(&name, mac, index, link_local, timeout) {
                                    Ok((address, dns)) => {
                                        let _ = done.send((name, address, dns));
                                    }
                                    Err(e) => log::warn!("{e:#}"),
                                }
                            });
                    }
                }
                Ipv6Step::Wait => {
                    // Say once why an advertised interface is not usable yet.
                    let stuck = advert_seen
                        .get(name)
                        .is_some_and(|at| at.elapsed() >= IPV6_STUCK);
                    if stuck && !explained.contains(name) {
                        explained.push(name.clone());
                        let mine: Vec<String> = addresses
                            .iter()
                            .filter(|a| a.interface == *name)
                            .map(|a| {
                                format!(
                                    "{}/{} scope {:x} flags {:x}",
                                    a.address, a.prefix_len, a.scope, a.flags
                                )
                            })
                            .collect();
                        log::warn!(
                            "net: {name} has a router advertisement but no usable IPv6 yet: addresses [{}], default route {}",
                            mine.join(", "),
                            ipv6::default_gateway(&routes, name)
                                .map_or_else(|| "none".to_owned(), |g| g.to_string())
                        );
                    }
                }
                Ipv6Step::Ready(setup) => {
                    log::info!("net: {name} ipv6 {}", setup.describe());
                    reported.push(name.clone());
                    let _ = events.send(Event::Offer(Candidate {
                        interface: name.clone(),
                        mac: *mac,
                        offer: Offer::Ipv6(setup),
                    }));
                }
            }
        }
    }
}

/// Runs DHCPv6 on one interface and adds the leased address (as a /128:
/// the on-link prefix comes from the router advertisement).
fn dhcp6_on(
    name: &str,
    mac: [u8; 6],
    ifindex: u32,
    link_local: Ipv6Addr,
    timeout: Duration,
) -> Result<(Ipv6Addr, Vec<Ipv6Addr>)> {
    let socket = sys::Dhcp6Socket::open(link_local, ifindex)
        .with_context(|| format!("dhcpv6 on {name}: binding [{link_local}%{name}]:546"))?;
    let xid = random_xid(mac).to_be_bytes();
    let mut client = Dhcp6Client::new(mac, [xid[1], xid[2], xid[3]]);
    let start = Instant::now();
    let mut buf = vec![0u8; 1500];
    let lease = loop {
        if let Some(lease) = client.lease() {
            break lease.clone();
        }
        let now = start.elapsed();
        if now >= timeout {
            bail!("dhcpv6 on {name}: no answer after {} s", timeout.as_secs());
        }
        if let Some(message) = client.poll_transmit(now) {
            socket
                .send(&message)
                .with_context(|| format!("dhcpv6 on {name}: sending"))?;
        }
        let wait = client.poll_at().min(timeout).saturating_sub(now);
        if let Some(len) = socket
            .recv_timeout(&mut buf, wait)
            .with_context(|| format!("dhcpv6 on {name}: receiving"))?
        {
            client.handle(buf.get(..len).unwrap_or_default(), start.elapsed());
        }
    };
    sys::add_ipv6_address(name, lease.address, 128)
        .with_context(|| format!("adding {}/128 on {name}", lease.address))?;
    log::info!("dhcpv6: {name} leased {}", lease.address);
    Ok((lease.address, lease.dns_servers))
}
