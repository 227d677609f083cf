//! Network bring-up: a sans-IO DHCPv4 client, the static setup DRP renders
//! onto the command line (`provisioner.ip=` and friends, with VLAN and MTU),
//! and the plans that configure the kernel.
//!
//! [`bring_up`] is what PID 1 calls. The decisions in it (which interface,
//! when to retransmit, what to configure) are pure functions tested here; the
//! syscalls are in [`crate::sys::net`].

pub mod choice;
pub mod config;
pub mod dhcp;
pub mod dhcp6;
pub mod ipv6;
pub mod params;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::io::Read as _;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result, anyhow, bail};

pub use choice::{Candidate, Decision, LeaseChoice, Offer};
pub use config::{InterfacePlan, Route};
pub use dhcp::{DhcpClient, Lease};
pub use dhcp6::Dhcp6Client;
pub use ipv6::{Ipv6Setup, Ipv6Step};
pub use params::{InterfaceSelector, NetConfig, StaticConfig};

use crate::sys::net as sys;

/// How long to wait for link after bringing interfaces up, unless
/// `imprint.link-timeout=` says otherwise. Copper links negotiate in 1–3 s;
/// DHCP starts on each NIC the moment it has link, so a port with nothing
/// plugged in only delays the deploy when it is the `BOOTIF=` NIC, and
/// then by [`BOOTIF_GRACE`] at most once another NIC has a lease.
pub const DEFAULT_LINK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a lease from another NIC waits for the `BOOTIF=` NIC's own.
const BOOTIF_GRACE: Duration = Duration::from_secs(2);
/// How long a usable IPv6 setup waits for an IPv4 lease, which wins, so a
/// dual-stack network deploys over IPv4 as before.
const IPV4_GRACE: Duration = Duration::from_secs(3);
/// How often a DHCP worker checks whether it is still wanted.
const CANCEL_POLL: Duration = Duration::from_millis(500);
/// Router solicitations are repeated this often until an advertisement comes.
const SOLICIT_INTERVAL: Duration = Duration::from_secs(1);
/// After this long with a router advertisement but no usable setup, the
/// IPv6 worker logs what it sees.
const IPV6_STUCK: Duration = Duration::from_secs(10);
/// How often the IPv6 worker looks at the kernel's addresses and routes.
const IPV6_POLL: Duration = Duration::from_millis(200);
/// How long the NIC chosen for a static setup may take to get link. Longer
/// than [`DEFAULT_LINK_TIMEOUT`]: there is no DHCP timeout behind it to absorb a
/// switch port that runs spanning tree before forwarding (up to 30 s).
const STATIC_CARRIER_WAIT: Duration = Duration::from_secs(30);
const CARRIER_POLL: Duration = Duration::from_millis(100);

/// ARPHRD_ETHER, the `type` of an Ethernet interface in sysfs.
const ARPHRD_ETHER: u16 = 1;

/// The longest interface name the kernel takes (IFNAMSIZ - 1).
const MAX_INTERFACE_NAME: usize = 15;

/// What [`bring_up`] configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Configured {
    /// The interface holding the address: the NIC, or `<nic>.<vid>` with a VLAN.
    pub interface: String,
    /// The MAC of the physical NIC.
    pub mac: [u8; 6],
    /// The DHCP lease; `None` for a static setup or IPv6.
    pub lease: Option<Lease>,
    /// The IPv6 setup, when IPv6 was chosen (no IPv4 lease came).
    pub ipv6: Option<Ipv6Setup>,
    /// When (since the kernel started) a NIC first had carrier, for the
    /// boot timeline.
    pub link_up: Option<Duration>,
}

/// One entry of `/sys/class/net`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceInfo {
    pub name: String,
    /// ARPHRD_* (`type`); `None` if unreadable.
    pub kind: Option<u16>,
    pub carrier: bool,
    pub mac: Option<[u8; 6]>,
}

/// Brings up `lo` and every Ethernet NIC (with IPv6 autoconfiguration on),
/// then configures one: statically when `config` has `provisioner.ip=`, else
/// from DHCP run on every NIC with carrier at once, choosing as
/// [`choice`] says (the `BOOTIF=` NIC's lease first; IPv6 when no IPv4 lease
/// comes). Sets the address, default route and `/etc/resolv.conf`.
pub fn bring_up(config: &NetConfig, dhcp_timeout: Duration) -> Result<Configured> {
    sys::set_ipv4_address("lo", Ipv4Addr::LOCALHOST, Ipv4Addr::new(255, 0, 0, 0))
        .context("setting 127.0.0.1/8 on lo")?;
    sys::set_link_up("lo").context("bringing up lo")?;

    let sysfs = Path::new("/sys/class/net");
    let interfaces = list_interfaces(sysfs).context("listing /sys/class/net")?;
    let ethernet = ethernet_interfaces(&interfaces);
    if ethernet.is_empty() {
        bail!(
            "no Ethernet interface (found: {})",
            describe_interfaces(&interfaces)
        );
    }
    for iface in &ethernet {
        enable_ipv6_autoconf(&iface.name);
        match sys::set_link_up(&iface.name) {
            Ok(()) => log::info!(
                "net: {} up, mac {}",
                iface.name,
                iface
                    .mac
                    .map_or_else(|| "unknown".to_owned(), |m| format_mac(&m))
            ),
            Err(e) => log::warn!("net: bringing up {}: {e}", iface.name),
        }
    }
    match &config.static_ipv4 {
        Some(static_ipv4) => bring_up_static(
            sysfs,
            static_ipv4,
            config.boot_mac,
            config.link_timeout.unwrap_or(DEFAULT_LINK_TIMEOUT),
        ),
        None => bring_up_dynamic(
            sysfs,
            config.boot_mac,
            config.link_timeout.unwrap_or(DEFAULT_LINK_TIMEOUT),
            dhcp_timeout,
        ),
    }
}

/// The kernel's defaults already accept router advertisements and
/// autoconfigure on a host that does not forward; set them anyway, so a
/// kernel built or booted otherwise (`ipv6.disable_ipv6=1` aside) still
/// does. A kernel without IPv6 has no such files: only logged.
fn enable_ipv6_autoconf(interface: &str) {
    for (key, value) in [("disable_ipv6", "0"), ("accept_ra", "1"), ("autoconf", "1")] {
        if let Err(e) = sys::set_ipv6_conf(interface, key, value) {
            log::debug!("net: ipv6 {key}={value} on {interface}: {e}");
        }
    }
}

/// What the per-NIC workers report to [`bring_up_dynamic`].
enum Event {
    Offer(Candidate),
    Ipv4Failed { interface: String, error: String },
}

/// DHCP on every NIC with carrier, IPv6 on all of them, one result chosen.
fn bring_up_dynamic(
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

/// The static setup: no DHCP packet is sent.
fn bring_up_static(
    sysfs: &Path,
    static_ipv4: &StaticConfig,
    boot_mac: Option<[u8; 6]>,
    link_timeout: Duration,
) -> Result<Configured> {
    // Named NICs need no carrier to be chosen; "the only NIC with carrier"
    // needs every NIC to have had its chance to get link.
    let interfaces = if static_ipv4.interface.is_some() || boot_mac.is_some() {
        list_interfaces(sysfs).context("listing /sys/class/net")?
    } else {
        wait_for_carrier(sysfs, None, link_timeout)?
    };
    let (nic, mac) = choose_static_nic(&interfaces, static_ipv4.interface.as_ref(), boot_mac)
        .map_err(|e| anyhow!(e))?;
    let plan = plan_static(&nic, mac, static_ipv4).map_err(|e| anyhow!(e))?;
    wait_for_nic_carrier(sysfs, &nic, STATIC_CARRIER_WAIT)?;
    let link_up = crate::timeline::since_boot();
    if let Some(mtu) = plan.mtu {
        sys::set_mtu(&nic, mtu).with_context(|| format!("setting mtu {mtu} on {nic}"))?;
        log::info!("net: {nic} mtu {mtu}");
    }
    if let Some(vid) = plan.vlan {
        let vlan = &plan.address.interface;
        load_vlan_module();
        sys::add_vlan(&nic, vid)
            .with_context(|| format!("creating VLAN interface {vlan} on {nic} (needs 8021q)"))?;
        if let Some(mtu) = plan.mtu {
            sys::set_mtu(vlan, mtu).with_context(|| format!("setting mtu {mtu} on {vlan}"))?;
        }
        sys::set_link_up(vlan).with_context(|| format!("bringing up {vlan}"))?;
        log::info!("net: {vlan} up (vlan {vid} on {nic})");
    }
    apply(&plan.address, Path::new("/"))?;
    log::info!("net: static {}", describe_plan(&plan.address));
    Ok(Configured {
        interface: plan.address.interface,
        mac,
        lease: None,
        ipv6: None,
        link_up: Some(link_up),
    })
}

/// Loads 8021q and its dependencies from the initramfs's module tree. A
/// failure is only logged: the kernel may have it built in, and if it has
/// not, creating the VLAN interface fails naming it.
fn load_vlan_module() {
    let dir = Path::new("/lib/modules").join(crate::sys::kmod::kernel_release());
    let load = || -> Result<()> {
        let index = crate::modules::ModuleIndex::load(&dir)?;
        for entry in index.closure(&["8021q"])? {
            if crate::sys::kmod::load_module(&dir.join(&entry.path))?
                == crate::sys::kmod::Loaded::Now
            {
                log::info!("loaded {}", entry.name);
            }
        }
        Ok(())
    };
    if let Err(e) = load() {
        log::warn!("net: loading 8021q: {e:#}");
    }
}

/// What the static setup does, decided before anything is touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticPlan {
    /// The physical NIC.
    pub nic: String,
    pub mac: [u8; 6],
    /// Set on the NIC (and on the VLAN interface) before the address.
    pub mtu: Option<u32>,
    /// The VLAN interface `<nic>.<vid>` is created on the NIC.
    pub vlan: Option<u16>,
    /// The address, routes and resolver, on the VLAN interface if any.
    pub address: InterfacePlan,
}

/// Plans the static setup on `nic`. The VLAN interface is named the way the
/// kernel names it by default (`<nic>.<vid>`, VLAN_NAME_TYPE_RAW_PLUS_VID_NO_PAD),
/// which must fit in IFNAMSIZ.
pub fn plan_static(nic: &str, mac: [u8; 6], config: &StaticConfig) -> Result<StaticPlan, String> {
    let interface = match config.vlan {
        Some(vid) => {
            let name = format!("{nic}.{vid}");
            if name.len() > MAX_INTERFACE_NAME {
                return Err(format!(
                    "provisioner.vlan={vid}: the VLAN interface name {name} is longer than the kernel's {MAX_INTERFACE_NAME} bytes"
                ));
            }
            name
        }
        None => nic.to_owned(),
    };
    Ok(StaticPlan {
        nic: nic.to_owned(),
        mac,
        mtu: config.mtu,
        vlan: config.vlan,
        address: config::static_plan(&interface, config),
    })
}

/// The NIC a static setup configures: `provisioner.interface=` (name or
/// MAC), else the `BOOTIF=` NIC, else the only Ethernet NIC with carrier.
/// Errors name the parameter and every NIC seen.
pub fn choose_static_nic(
    interfaces: &[InterfaceInfo],
    selector: Option<&InterfaceSelector>,
    boot_mac: Option<[u8; 6]>,
) -> Result<(String, [u8; 6]), String> {
    let ethernet = ethernet_interfaces(interfaces);
    let found = || describe_with_macs(&ethernet);
    let by_mac = |mac: [u8; 6]| {
        ethernet
            .iter()
            .find(|i| i.mac == Some(mac))
            .map(|i| (i.name.clone(), mac))
    };
    match (selector, boot_mac) {
        (Some(InterfaceSelector::Name(name)), _) => ethernet
            .iter()
            .find(|i| &i.name == name)
            .and_then(|i| Some((i.name.clone(), i.mac?)))
            .ok_or_else(|| {
                format!(
                    "provisioner.interface={name}: no Ethernet interface of that name (found: {})",
                    found()
                )
            }),
        (Some(InterfaceSelector::Mac(mac)), _) => by_mac(*mac).ok_or_else(|| {
            format!(
                "provisioner.interface={}: no Ethernet interface has that MAC (found: {})",
                format_mac(mac),
                found()
            )
        }),
        (None, Some(mac)) => by_mac(mac).ok_or_else(|| {
            format!(
                "BOOTIF={}: no Ethernet interface has that MAC (found: {}); set provisioner.interface=",
                format_mac(&mac),
                found()
            )
        }),
        (None, None) => {
            let with_carrier: Vec<&&InterfaceInfo> =
                ethernet.iter().filter(|i| i.carrier).collect();
            match with_carrier.as_slice() {
                [only] => Ok((only.name.clone(), only.mac.unwrap_or_default())),
                [] => Err(format!(
                    "provisioner.ip=: no network interface with carrier (found: {}); set provisioner.interface=",
                    describe_interfaces(&ethernet.iter().map(|i| (*i).clone()).collect::<Vec<_>>())
                )),
                several => {
                    let names: Vec<&str> = several.iter().map(|i| i.name.as_str()).collect();
                    Err(format!(
                        "provisioner.ip=: {} all have carrier; say which to use with provisioner.interface= or BOOTIF=",
                        names.join(", ")
                    ))
                }
            }
        }
    }
}

/// `eth0 52:54:00:12:34:56, eth1 52:54:00:12:34:57`, or `none`.
fn describe_with_macs(interfaces: &[&InterfaceInfo]) -> String {
    if interfaces.is_empty() {
        return "none".to_owned();
    }
    let parts: Vec<String> = interfaces
        .iter()
        .map(|i| match i.mac {
            Some(mac) => format!("{} {}", i.name, format_mac(&mac)),
            None => i.name.clone(),
        })
        .collect();
    parts.join(", ")
}

/// `10.0.2.50/24 on eth0 via 10.0.2.2`, the static counterpart of
/// [`describe_lease`].
pub fn describe_plan(plan: &InterfacePlan) -> String {
    let mut text = format!("{}/{} on {}", plan.address, plan.prefix_len, plan.interface);
    for route in &plan.routes {
        if route.prefix_len == 0
            && let Some(gateway) = route.gateway
        {
            let _ = write!(text, " via {gateway}");
        }
    }
    text
}

/// Waits until `name` has carrier; an error after `timeout` names it.
fn wait_for_nic_carrier(sysfs: &Path, name: &str, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        let interfaces = list_interfaces(sysfs).context("listing /sys/class/net")?;
        if interfaces.iter().any(|i| i.name == name && i.carrier) {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            bail!(
                "{name} has no carrier after {} s: check its cable and switch port",
                timeout.as_secs()
            );
        }
        std::thread::sleep(CARRIER_POLL);
    }
}

/// Re-reads sysfs until the preferred NIC (or, without one, every Ethernet
/// NIC) has carrier, or `timeout` is over.
fn wait_for_carrier(
    sysfs: &Path,
    prefer_mac: Option<[u8; 6]>,
    timeout: Duration,
) -> Result<Vec<InterfaceInfo>> {
    let start = Instant::now();
    loop {
        let interfaces = list_interfaces(sysfs).context("listing /sys/class/net")?;
        if carrier_settled(&interfaces, prefer_mac) || start.elapsed() >= timeout {
            return Ok(interfaces);
        }
        std::thread::sleep(CARRIER_POLL);
    }
}

/// Whether waiting longer for carrier could change the choice.
pub fn carrier_settled(interfaces: &[InterfaceInfo], prefer_mac: Option<[u8; 6]>) -> bool {
    let ethernet = ethernet_interfaces(interfaces);
    let preferred_up = prefer_mac.is_some_and(|preferred| {
        ethernet
            .iter()
            .any(|i| i.mac == Some(preferred) && i.carrier)
    });
    if preferred_up {
        return true;
    }
    !ethernet.is_empty() && ethernet.iter().all(|i| i.carrier)
}

/// Runs DHCP on one interface over a fresh packet socket, dropped on return.
fn dhcp_on(name: &str, mac: [u8; 6], timeout: Duration, stop: &AtomicBool) -> Result<Lease> {
    let mut socket = sys::PacketSocket::open(name)
        .with_context(|| format!("opening packet socket on {name}"))?;
    let client = DhcpClient::new(mac, random_xid(mac));
    let start = Instant::now();
    let lease = run_dhcp(
        &mut socket,
        client,
        || start.elapsed(),
        timeout,
        || stop.load(Ordering::SeqCst),
    )
    .with_context(|| format!("dhcp on {name}"))?;
    // "leased" is logged for the NIC that is chosen and configured only.
    log::info!(
        "dhcp: {name} ({}) offered {}",
        format_mac(&mac),
        describe_lease(&lease)
    );
    Ok(lease)
}

/// Sets the address and routes and writes `<root>/etc/resolv.conf`.
fn apply(plan: &InterfacePlan, root: &Path) -> Result<()> {
    let name = &plan.interface;
    sys::set_ipv4_address(name, plan.address, plan.netmask)
        .with_context(|| format!("setting {}/{} on {name}", plan.address, plan.prefix_len))?;
    for route in &plan.routes {
        sys::add_route(name, route.destination, route.netmask(), route.gateway)
            .with_context(|| format!("adding route {route} on {name}"))?;
    }
    write_resolv_conf(root, &plan.resolv_conf)
}

fn write_resolv_conf(root: &Path, text: &str) -> Result<()> {
    let etc = root.join("etc");
    fs::create_dir_all(&etc).with_context(|| format!("creating {}", etc.display()))?;
    let path = etc.join("resolv.conf");
    fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

/// Moves frames between a [`DhcpClient`] and the wire. The seam for tests
/// and for running several interfaces at once.
pub trait FrameLink {
    fn send(&mut self, frame: &[u8]) -> std::io::Result<()>;
    /// One frame within `timeout`, or `None`.
    fn recv_timeout(&mut self, buf: &mut [u8], timeout: Duration)
    -> std::io::Result<Option<usize>>;
}

impl FrameLink for sys::PacketSocket {
    fn send(&mut self, frame: &[u8]) -> std::io::Result<()> {
        sys::PacketSocket::send(self, frame)
    }
    fn recv_timeout(
        &mut self,
        buf: &mut [u8],
        timeout: Duration,
    ) -> std::io::Result<Option<usize>> {
        sys::PacketSocket::recv_timeout(self, buf, timeout)
    }
}

/// Drives `client` until it holds a lease, `timeout` has passed on `clock`,
/// or `cancelled` says so (another NIC's result was chosen), which is looked
/// at least every [`CANCEL_POLL`].
pub fn run_dhcp(
    link: &mut impl FrameLink,
    mut client: DhcpClient,
    mut clock: impl FnMut() -> Duration,
    timeout: Duration,
    cancelled: impl Fn() -> bool,
) -> Result<Lease> {
    // Jumbo frames are dropped; DHCP replies never need them.
    let mut buf = vec![0u8; 1514];
    let deadline = clock().saturating_add(timeout);
    loop {
        let now = clock();
        if let Some(lease) = client.lease() {
            return Ok(lease.clone());
        }
        if now >= deadline {
            bail!("no answer after {} s", timeout.as_secs());
        }
        if cancelled() {
            bail!("stopped: another interface was chosen");
        }
        if let Some(frame) = client.poll_transmit(now) {
            link.send(&frame).context("sending")?;
        }
        let wait = client
            .poll_at()
            .min(deadline)
            .saturating_sub(now)
            .min(CANCEL_POLL);
        if let Some(len) = link.recv_timeout(&mut buf, wait).context("receiving")? {
            client.handle_frame(buf.get(..len).unwrap_or(&buf), clock());
        }
    }
}

/// The xid must differ between machines booted at the same moment: take it
/// from the kernel's pool, and if /dev/urandom is not there yet, from the MAC
/// and the clock.
fn random_xid(mac: [u8; 6]) -> u32 {
    let mut bytes = [0u8; 4];
    if fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_ok()
    {
        return u32::from_ne_bytes(bytes);
    }
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    xid_from(mac, nanos)
}

/// FNV-1a over the MAC and the time.
fn xid_from(mac: [u8; 6], nanos: u32) -> u32 {
    mac.iter()
        .chain(&nanos.to_le_bytes())
        .fold(0x811c_9dc5_u32, |h, b| {
            (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
        })
}

/// Reads every interface under `sysfs_net` (normally `/sys/class/net`),
/// sorted by name.
pub fn list_interfaces(sysfs_net: &Path) -> std::io::Result<Vec<InterfaceInfo>> {
    let mut interfaces = Vec::new();
    for entry in fs::read_dir(sysfs_net)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let dir = entry.path();
        let read = |file: &str| fs::read_to_string(dir.join(file)).ok();
        interfaces.push(InterfaceInfo {
            kind: read("type").and_then(|s| s.trim().parse().ok()),
            // Reading `carrier` of a down interface fails with EINVAL.
            carrier: read("carrier").is_some_and(|s| s.trim() == "1"),
            mac: read("address").and_then(|s| parse_mac(s.trim())),
            name,
        });
    }
    interfaces.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(interfaces)
}

/// Interfaces DHCP can run on: Ethernet, not loopback.
pub fn ethernet_interfaces(interfaces: &[InterfaceInfo]) -> Vec<&InterfaceInfo> {
    interfaces
        .iter()
        .filter(|i| i.name != "lo" && i.kind == Some(ARPHRD_ETHER) && i.mac.is_some())
        .collect()
}

/// The interfaces to try DHCP on, in order: the one with `prefer_mac` first,
/// then the others with carrier by name. Errors name every interface seen.
pub fn dhcp_candidates(
    interfaces: &[InterfaceInfo],
    prefer_mac: Option<[u8; 6]>,
) -> Result<Vec<(String, [u8; 6])>, String> {
    let ethernet = ethernet_interfaces(interfaces);
    let mut candidates: Vec<(String, [u8; 6])> = ethernet
        .iter()
        .filter(|i| i.carrier)
        .filter_map(|i| Some((i.name.clone(), i.mac?)))
        .collect();
    if candidates.is_empty() {
        return Err(format!(
            "no network interface with carrier (found: {})",
            describe_interfaces(&ethernet.into_iter().cloned().collect::<Vec<_>>())
        ));
    }
    if let Some(preferred) = prefer_mac {
        // Stable: the rest keep their name order.
        candidates.sort_by_key(|(_, mac)| *mac != preferred);
        if candidates[0].1 != preferred {
            log::warn!(
                "net: no interface with carrier has the boot MAC {}, trying all",
                format_mac(&preferred)
            );
        }
    }
    Ok(candidates)
}

/// `eth0 [no carrier], eth1 [no carrier]`, or `none`.
pub fn describe_interfaces(interfaces: &[InterfaceInfo]) -> String {
    if interfaces.is_empty() {
        return "none".to_owned();
    }
    let parts: Vec<String> = interfaces
        .iter()
        .map(|i| {
            let state = match (i.kind, i.carrier) {
                (Some(ARPHRD_ETHER), true) => "carrier",
                (Some(ARPHRD_ETHER), false) => "no carrier",
                _ => "not ethernet",
            };
            format!("{} [{state}]", i.name)
        })
        .collect();
    parts.join(", ")
}

/// `10.0.2.15/24 via 10.0.2.2 dns 10.0.2.3 from 10.0.2.2`.
pub fn describe_lease(lease: &Lease) -> String {
    let mut text = format!("{}/{}", lease.address, lease.prefix_len);
    if let Some(router) = lease.router {
        let _ = write!(text, " via {router}");
    }
    if !lease.dns_servers.is_empty() {
        let servers: Vec<String> = lease.dns_servers.iter().map(ToString::to_string).collect();
        let _ = write!(text, " dns {}", servers.join(","));
    }
    let _ = write!(text, " from {}", lease.server);
    text
}

/// `52:54:00:12:34:56`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    let parts: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    parts.join(":")
}

/// Parses `52:54:00:12:34:56` (sysfs) or `52-54-00-12-34-56`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split([':', '-']);
    for byte in &mut mac {
        let part = parts.next()?;
        // from_str_radix alone would take a sign ("+5").
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::collections::VecDeque;
    use std::rc::Rc;

    const MAC0: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    const MAC1: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x57];

    fn iface(name: &str, kind: u16, carrier: bool, mac: [u8; 6]) -> InterfaceInfo {
        InterfaceInfo {
            name: name.into(),
            kind: Some(kind),
            carrier,
            mac: Some(mac),
        }
    }

    fn write_iface(root: &Path, name: &str, kind: &str, carrier: Option<&str>, address: &str) {
        let dir = root.join(name);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("type"), kind).unwrap();
        fs::write(dir.join("address"), address).unwrap();
        if let Some(carrier) = carrier {
            fs::write(dir.join("carrier"), carrier).unwrap();
        }
    }

    #[test]
    fn reads_a_sysfs_tree() {
        let root = tempfile::tempdir().unwrap();
        write_iface(
            root.path(),
            "lo",
            "772\n",
            Some("1\n"),
            "00:00:00:00:00:00\n",
        );
        write_iface(root.path(), "eth1", "1\n", None, "52:54:00:12:34:57\n");
        write_iface(
            root.path(),
            "eth0",
            "1\n",
            Some("1\n"),
            "52:54:00:12:34:56\n",
        );
        let list = list_interfaces(root.path()).unwrap();
        assert_eq!(
            list,
            [
                iface("eth0", 1, true, MAC0),
                iface("eth1", 1, false, MAC1),
                iface("lo", 772, true, [0; 6]),
            ]
        );
        let names: Vec<&str> = ethernet_interfaces(&list)
            .iter()
            .map(|i| i.name.as_str())
            .collect();
        assert_eq!(names, ["eth0", "eth1"]);
    }

    #[test]
    fn candidates_in_name_order_with_carrier_only() {
        let list = [
            iface("eth0", 1, false, MAC0),
            iface("eth1", 1, true, MAC1),
            iface("eth2", 1, true, [2; 6]),
            iface("wg0", 65534, true, [3; 6]),
        ];
        assert_eq!(
            dhcp_candidates(&list, None).unwrap(),
            [("eth1".to_owned(), MAC1), ("eth2".to_owned(), [2; 6])]
        );
    }

    #[test]
    fn preferred_mac_goes_first() {
        let list = [iface("eth0", 1, true, MAC0), iface("eth1", 1, true, MAC1)];
        let names: Vec<String> = dhcp_candidates(&list, Some(MAC1))
            .unwrap()
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(names, ["eth1", "eth0"]);
        // An unknown boot MAC falls back to name order.
        let names: Vec<String> = dhcp_candidates(&list, Some([9; 6]))
            .unwrap()
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(names, ["eth0", "eth1"]);
    }

    #[test]
    fn no_carrier_error_names_every_interface() {
        let list = [
            iface("eth0", 1, false, MAC0),
            iface("eth1", 1, false, MAC1),
            iface("lo", 772, true, [0; 6]),
        ];
        assert_eq!(
            dhcp_candidates(&list, None).unwrap_err(),
            "no network interface with carrier (found: eth0 [no carrier], eth1 [no carrier])"
        );
        assert_eq!(
            dhcp_candidates(&[], None).unwrap_err(),
            "no network interface with carrier (found: none)"
        );
    }

    #[test]
    fn carrier_wait_ends_when_preferred_or_all_have_link() {
        let both_down = [iface("eth0", 1, false, MAC0), iface("eth1", 1, false, MAC1)];
        let one_up = [iface("eth0", 1, false, MAC0), iface("eth1", 1, true, MAC1)];
        let both_up = [iface("eth0", 1, true, MAC0), iface("eth1", 1, true, MAC1)];
        assert!(!carrier_settled(&both_down, None));
        assert!(!carrier_settled(&one_up, None));
        assert!(!carrier_settled(&one_up, Some(MAC0)));
        assert!(carrier_settled(&one_up, Some(MAC1)));
        assert!(carrier_settled(&both_up, None));
        assert!(!carrier_settled(&[], None));
    }

    fn static_config(vlan: Option<u16>) -> StaticConfig {
        StaticConfig {
            address: Ipv4Addr::new(10, 0, 2, 50),
            prefix_len: 24,
            gateway: Some(Ipv4Addr::new(10, 0, 2, 2)),
            dns: vec![Ipv4Addr::new(10, 0, 2, 3)],
            interface: None,
            vlan,
            mtu: Some(1400),
        }
    }

    #[test]
    fn static_nic_by_name_or_mac_regardless_of_carrier() {
        let list = [iface("eth0", 1, true, MAC0), iface("eth1", 1, false, MAC1)];
        let by_name = InterfaceSelector::Name("eth1".into());
        assert_eq!(
            choose_static_nic(&list, Some(&by_name), Some(MAC0)).unwrap(),
            ("eth1".to_owned(), MAC1),
            "provisioner.interface= wins over BOOTIF="
        );
        let by_mac = InterfaceSelector::Mac(MAC1);
        assert_eq!(
            choose_static_nic(&list, Some(&by_mac), None).unwrap(),
            ("eth1".to_owned(), MAC1)
        );
        assert_eq!(
            choose_static_nic(&list, None, Some(MAC1)).unwrap(),
            ("eth1".to_owned(), MAC1),
            "the BOOTIF NIC without provisioner.interface="
        );
    }

    #[test]
    fn static_nic_missing_names_the_parameter_and_the_nics() {
        let list = [
            iface("eth0", 1, true, MAC0),
            iface("eth1", 1, false, MAC1),
            iface("lo", 772, true, [0; 6]),
        ];
        assert_eq!(
            choose_static_nic(&list, Some(&InterfaceSelector::Name("eno1".into())), None)
                .unwrap_err(),
            "provisioner.interface=eno1: no Ethernet interface of that name \
             (found: eth0 52:54:00:12:34:56, eth1 52:54:00:12:34:57)"
        );
        assert_eq!(
            choose_static_nic(&list, Some(&InterfaceSelector::Name("lo".into())), None)
                .unwrap_err(),
            "provisioner.interface=lo: no Ethernet interface of that name \
             (found: eth0 52:54:00:12:34:56, eth1 52:54:00:12:34:57)"
        );
        assert_eq!(
            choose_static_nic(&list, Some(&InterfaceSelector::Mac([9; 6])), None).unwrap_err(),
            "provisioner.interface=09:09:09:09:09:09: no Ethernet interface has that MAC \
             (found: eth0 52:54:00:12:34:56, eth1 52:54:00:12:34:57)"
        );
        assert_eq!(
            choose_static_nic(&list, None, Some([9; 6])).unwrap_err(),
            "BOOTIF=09:09:09:09:09:09: no Ethernet interface has that MAC \
             (found: eth0 52:54:00:12:34:56, eth1 52:54:00:12:34:57); set provisioner.interface="
        );
    }

    #[test]
    fn static_nic_without_hints_is_the_only_one_with_carrier() {
        let one_up = [iface("eth0", 1, false, MAC0), iface("eth1", 1, true, MAC1)];
        assert_eq!(
            choose_static_nic(&one_up, None, None).unwrap(),
            ("eth1".to_owned(), MAC1)
        );
        let both_up = [
            iface("eth0", 1, true, MAC0),
            iface("eth1", 1, true, MAC1),
            iface("lo", 772, true, [0; 6]),
        ];
        assert_eq!(
            choose_static_nic(&both_up, None, None).unwrap_err(),
            "provisioner.ip=: eth0, eth1 all have carrier; \
             say which to use with provisioner.interface= or BOOTIF="
        );
        let none_up = [iface("eth0", 1, false, MAC0), iface("eth1", 1, false, MAC1)];
        assert_eq!(
            choose_static_nic(&none_up, None, None).unwrap_err(),
            "provisioner.ip=: no network interface with carrier \
             (found: eth0 [no carrier], eth1 [no carrier]); set provisioner.interface="
        );
        assert_eq!(
            choose_static_nic(&[], None, None).unwrap_err(),
            "provisioner.ip=: no network interface with carrier (found: none); \
             set provisioner.interface="
        );
    }

    #[test]
    fn static_plan_without_vlan_configures_the_nic() {
        let plan = plan_static("eth0", MAC0, &static_config(None)).unwrap();
        assert_eq!(plan.nic, "eth0");
        assert_eq!(plan.mac, MAC0);
        assert_eq!(plan.vlan, None);
        assert_eq!(plan.mtu, Some(1400));
        assert_eq!(plan.address.interface, "eth0");
        assert_eq!(
            describe_plan(&plan.address),
            "10.0.2.50/24 on eth0 via 10.0.2.2"
        );
    }

    #[test]
    fn static_plan_with_vlan_puts_the_address_on_nic_dot_vid() {
        let plan = plan_static("enp3s0f1", MAC1, &static_config(Some(4094))).unwrap();
        assert_eq!(plan.nic, "enp3s0f1");
        assert_eq!(plan.mac, MAC1, "the physical NIC's MAC");
        assert_eq!(plan.vlan, Some(4094));
        assert_eq!(plan.address.interface, "enp3s0f1.4094");
        assert_eq!(
            describe_plan(&plan.address),
            "10.0.2.50/24 on enp3s0f1.4094 via 10.0.2.2"
        );
        assert!(plan.address.resolv_conf.contains("nameserver 10.0.2.3\n"));
    }

    #[test]
    fn static_plan_refuses_a_vlan_name_the_kernel_cannot_hold() {
        // 15 bytes fit, 16 do not.
        assert!(plan_static("enp129s0f1", MAC0, &static_config(Some(4094))).is_ok());
        assert_eq!(
            plan_static("enp129s0f1np1", MAC0, &static_config(Some(42))).unwrap_err(),
            "provisioner.vlan=42: the VLAN interface name enp129s0f1np1.42 is longer than the kernel's 15 bytes"
        );
    }

    #[test]
    fn macs() {
        assert_eq!(parse_mac("52:54:00:12:34:56"), Some(MAC0));
        assert_eq!(parse_mac("52-54-00-12-34-56"), Some(MAC0));
        assert_eq!(parse_mac("52:54:00:12:34"), None);
        assert_eq!(parse_mac("52:54:00:12:34:56:78"), None);
        assert_eq!(parse_mac("52:54:00:12:34:5g"), None);
        assert_eq!(parse_mac("52:54:00:12:34:+5"), None);
        assert_eq!(format_mac(&MAC0), "52:54:00:12:34:56");
    }

    #[test]
    fn xid_fallback_depends_on_mac_and_time() {
        assert_ne!(xid_from(MAC0, 1), xid_from(MAC1, 1));
        assert_ne!(xid_from(MAC0, 1), xid_from(MAC0, 2));
    }

    #[test]
    fn lease_log_line() {
        let lease = Lease {
            address: Ipv4Addr::new(10, 0, 2, 15),
            prefix_len: 24,
            router: Some(Ipv4Addr::new(10, 0, 2, 2)),
            dns_servers: vec![Ipv4Addr::new(10, 0, 2, 3)],
            server: Ipv4Addr::new(10, 0, 2, 2),
            lease_duration: None,
            domain: None,
            hostname: None,
        };
        assert_eq!(
            describe_lease(&lease),
            "10.0.2.15/24 via 10.0.2.2 dns 10.0.2.3 from 10.0.2.2"
        );
    }

    #[test]
    fn resolv_conf_is_written_under_root() {
        let root = tempfile::tempdir().unwrap();
        write_resolv_conf(root.path(), "nameserver 10.0.2.3\n").unwrap();
        assert_eq!(
            fs::read_to_string(root.path().join("etc/resolv.conf")).unwrap(),
            "nameserver 10.0.2.3\n"
        );
    }

    /// A link whose clock only moves when it waits, answering each DHCP
    /// message with the next scripted reply.
    struct FakeLink {
        now: Rc<Cell<Duration>>,
        sent: Vec<Vec<u8>>,
        replies: VecDeque<Vec<u8>>,
        /// Answer only every n-th transmission (1 = all).
        answer_every: usize,
        pending: Option<Vec<u8>>,
    }

    impl FrameLink for FakeLink {
        fn send(&mut self, frame: &[u8]) -> std::io::Result<()> {
            self.sent.push(frame.to_vec());
            if self.sent.len() % self.answer_every == 0 {
                self.pending = self.replies.pop_front();
            }
            Ok(())
        }
        fn recv_timeout(
            &mut self,
            buf: &mut [u8],
            timeout: Duration,
        ) -> std::io::Result<Option<usize>> {
            if let Some(frame) = self.pending.take() {
                buf[..frame.len()].copy_from_slice(&frame);
                return Ok(Some(frame.len()));
            }
            self.now.set(self.now.get() + timeout);
            Ok(None)
        }
    }

    /// A server reply to `xid`, as QEMU's slirp sends it.
    fn reply(kind: smoltcp::wire::DhcpMessageType, xid: u32) -> Vec<u8> {
        use smoltcp::wire::{DhcpOption, DhcpRepr, EthernetAddress};
        let server = Ipv4Addr::new(10, 0, 2, 2);
        let repr = DhcpRepr {
            message_type: kind,
            transaction_id: xid,
            secs: 0,
            client_hardware_address: EthernetAddress(MAC0),
            client_ip: Ipv4Addr::UNSPECIFIED,
            your_ip: Ipv4Addr::new(10, 0, 2, 15),
            server_ip: Ipv4Addr::UNSPECIFIED,
            router: Some(server),
            subnet_mask: Some(Ipv4Addr::new(255, 255, 255, 0)),
            relay_agent_ip: Ipv4Addr::UNSPECIFIED,
            broadcast: true,
            requested_ip: None,
            client_identifier: None,
            server_identifier: Some(server),
            parameter_request_list: None,
            dns_servers: None,
            max_size: None,
            lease_duration: Some(3600),
            renew_duration: None,
            rebind_duration: None,
            additional_options: &[DhcpOption {
                kind: 6,
                data: &[10, 0, 2, 3],
            }],
        };
        dhcp::build_frame(
            &dhcp::FrameAddrs {
                src_mac: EthernetAddress([0x52, 0x55, 10, 0, 2, 2]),
                dst_mac: EthernetAddress::BROADCAST,
                src_ip: server,
                dst_ip: Ipv4Addr::BROADCAST,
                src_port: 67,
                dst_port: 68,
            },
            &repr,
        )
    }

    fn fake_link(answer_every: usize, xid: u32) -> (FakeLink, Rc<Cell<Duration>>) {
        use smoltcp::wire::DhcpMessageType::{Ack, Offer};
        let now = Rc::new(Cell::new(Duration::ZERO));
        let link = FakeLink {
            now: Rc::clone(&now),
            sent: Vec::new(),
            replies: VecDeque::from([reply(Offer, xid), reply(Ack, xid)]),
            answer_every,
            pending: None,
        };
        (link, now)
    }

    #[test]
    fn run_dhcp_gets_a_lease_through_a_link() {
        let (mut link, now) = fake_link(1, 7);
        let clock = Rc::clone(&now);
        let lease = run_dhcp(
            &mut link,
            DhcpClient::new(MAC0, 7),
            move || clock.get(),
            Duration::from_secs(30),
            || false,
        )
        .unwrap();
        assert_eq!(
            describe_lease(&lease),
            "10.0.2.15/24 via 10.0.2.2 dns 10.0.2.3 from 10.0.2.2"
        );
        assert_eq!(link.sent.len(), 2, "DISCOVER and REQUEST");
        assert_eq!(
            now.get(),
            Duration::ZERO,
            "no waiting when answered at once"
        );
    }

    #[test]
    fn run_dhcp_stops_when_cancelled() {
        let (mut link, now) = fake_link(1, 8);
        let clock = Rc::clone(&now);
        let polled = Cell::new(0);
        let err = run_dhcp(
            &mut link,
            DhcpClient::new(MAC0, 7),
            move || clock.get(),
            Duration::from_secs(30),
            || {
                polled.set(polled.get() + 1);
                polled.get() > 4
            },
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "stopped: another interface was chosen");
        // Four waits, none longer than CANCEL_POLL (retransmissions cut some short).
        assert!(now.get() <= CANCEL_POLL * 4, "{:?}", now.get());
        assert!(now.get() >= Duration::from_secs(1), "{:?}", now.get());
    }

    #[test]
    fn run_dhcp_survives_lost_replies() {
        // The server answers only every other transmission: each step needs
        // one retransmission.
        let (mut link, now) = fake_link(2, 7);
        let clock = Rc::clone(&now);
        run_dhcp(
            &mut link,
            DhcpClient::new(MAC0, 7),
            move || clock.get(),
            Duration::from_secs(30),
            || false,
        )
        .unwrap();
        assert_eq!(link.sent.len(), 4);
        assert!(now.get() >= Duration::from_secs(2));
    }

    #[test]
    fn run_dhcp_times_out_naming_the_wait() {
        let (mut link, now) = fake_link(1, 8);
        let clock = Rc::clone(&now);
        let err = run_dhcp(
            &mut link,
            DhcpClient::new(MAC0, 7),
            move || clock.get(),
            Duration::from_secs(30),
            || false,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "no answer after 30 s");
        assert_eq!(
            now.get(),
            Duration::from_secs(30),
            "waits exactly the timeout"
        );
        // Sent at 0, 1, 3, 7, 15, 23 s (plus jitter); the next would be at 31 s.
        assert_eq!(link.sent.len(), 6);
    }
}

/// Real sockets and ioctls against a veth pair, with a scripted DHCP server on
/// the far end. Needs root in a private network namespace with its own sysfs:
///
/// `unshare -nm sh -c 'mount -t sysfs sysfs /sys && cargo test -p imprint --lib -- --ignored veth'`
#[cfg(test)]
mod veth_tests {
    use super::*;
    use smoltcp::wire::{
        DhcpMessageType, DhcpOption, DhcpPacket, DhcpRepr, EthernetAddress, EthernetFrame,
        Ipv4Packet, UdpPacket,
    };
    use std::process::Command;

    fn ip(args: &str) -> String {
        let out = Command::new("ip")
            .args(args.split_whitespace())
            .output()
            .unwrap();
        assert!(out.status.success(), "ip {args}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    /// Answers one DISCOVER and one REQUEST on `veth-s`.
    fn serve(server_mac: [u8; 6]) {
        let socket = sys::PacketSocket::open("veth-s").unwrap();
        let mut buf = [0u8; 1514];
        let mut answered = 0;
        while answered < 2 {
            let Some(len) = socket
                .recv_timeout(&mut buf, Duration::from_secs(20))
                .unwrap()
            else {
                panic!("server: no request");
            };
            let Some((kind, xid, chaddr)) = parse_request(&buf[..len]) else {
                continue;
            };
            let reply_kind = match kind {
                DhcpMessageType::Discover => DhcpMessageType::Offer,
                DhcpMessageType::Request => DhcpMessageType::Ack,
                _ => continue,
            };
            let server = Ipv4Addr::new(10, 9, 0, 1);
            let repr = DhcpRepr {
                message_type: reply_kind,
                transaction_id: xid,
                secs: 0,
                client_hardware_address: chaddr,
                client_ip: Ipv4Addr::UNSPECIFIED,
                your_ip: Ipv4Addr::new(10, 9, 0, 15),
                server_ip: Ipv4Addr::UNSPECIFIED,
                router: Some(server),
                subnet_mask: Some(Ipv4Addr::new(255, 255, 255, 0)),
                relay_agent_ip: Ipv4Addr::UNSPECIFIED,
                broadcast: true,
                requested_ip: None,
                client_identifier: None,
                server_identifier: Some(server),
                parameter_request_list: None,
                dns_servers: None,
                max_size: None,
                lease_duration: Some(600),
                renew_duration: None,
                rebind_duration: None,
                additional_options: &[DhcpOption {
                    kind: 6,
                    data: &[10, 9, 0, 53],
                }],
            };
            let frame = dhcp::build_frame(
                &dhcp::FrameAddrs {
                    src_mac: EthernetAddress(server_mac),
                    dst_mac: EthernetAddress::BROADCAST,
                    src_ip: server,
                    dst_ip: Ipv4Addr::BROADCAST,
                    src_port: 67,
                    dst_port: 68,
                },
                &repr,
            );
            socket.send(&frame).unwrap();
            answered += 1;
        }
    }

    fn parse_request(frame: &[u8]) -> Option<(DhcpMessageType, u32, EthernetAddress)> {
        let eth = EthernetFrame::new_checked(frame).ok()?;
        let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
        let udp = UdpPacket::new_checked(ip.payload()).ok()?;
        if udp.dst_port() != 67 {
            return None;
        }
        let dhcp = DhcpPacket::new_checked(udp.payload()).ok()?;
        let repr = DhcpRepr::parse(&dhcp).ok()?;
        Some((
            repr.message_type,
            repr.transaction_id,
            repr.client_hardware_address,
        ))
    }

    #[test]
    #[ignore = "needs root in a private network namespace, see the module docs"]
    fn dhcp_over_a_veth_pair() {
        let links = ip("-o link show");
        assert!(
            links.lines().count() == 1 && links.contains("lo:"),
            "refusing to run outside an empty network namespace: {links}"
        );
        ip("link add veth-c type veth peer name veth-s");
        // No address on the server end: the scripted server speaks through a
        // packet socket, and a local 10.9.0.1 would make it an invalid gateway.
        ip("link set veth-s up");

        sys::set_ipv4_address("lo", Ipv4Addr::LOCALHOST, Ipv4Addr::new(255, 0, 0, 0)).unwrap();
        sys::set_link_up("lo").unwrap();
        sys::set_link_up("veth-c").unwrap();
        let interfaces =
            wait_for_carrier(Path::new("/sys/class/net"), None, DEFAULT_LINK_TIMEOUT).unwrap();
        let candidates = dhcp_candidates(&interfaces, None).unwrap();
        let names: Vec<&str> = candidates.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["veth-c", "veth-s"]);
        let (name, mac) = candidates[0].clone();
        let server_mac = candidates[1].1;

        let server = std::thread::spawn(move || serve(server_mac));
        let lease = dhcp_on(&name, mac, Duration::from_secs(20), &AtomicBool::new(false)).unwrap();
        server.join().unwrap();
        assert_eq!(
            describe_lease(&lease),
            "10.9.0.15/24 via 10.9.0.1 dns 10.9.0.53 from 10.9.0.1"
        );

        let root = tempfile::tempdir().unwrap();
        let plan = config::plan(&name, &lease);
        apply(&plan, root.path()).unwrap();
        // Twice: a retried bring-up must not fail on the existing route.
        apply(&plan, root.path()).unwrap();
        assert!(ip("-4 -o addr show dev veth-c").contains("inet 10.9.0.15/24"));
        assert!(ip("-4 route show default").contains("default via 10.9.0.1 dev veth-c"));
        assert!(ip("-o link show lo").contains("UP"));
        assert!(
            fs::read_to_string(root.path().join("etc/resolv.conf"))
                .unwrap()
                .contains("nameserver 10.9.0.53\n")
        );
    }
}
