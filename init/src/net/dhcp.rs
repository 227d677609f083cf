//! A sans-IO DHCPv4 client (RFC 2131), shaped like smoltcp's `socket::dhcpv4`:
//! the caller feeds it received Ethernet frames and the current time, and asks
//! it for the next frame to send. It owns no socket and no clock, so the whole
//! exchange is scripted in tests.
//!
//! Only what a deploy needs: DISCOVER -> OFFER -> REQUEST -> ACK, once. There
//! is no renewal: a deploy is expected to finish well within the lease, and
//! the kernel keeps an address set by ioctl until it is removed.

use std::net::Ipv4Addr;
use std::time::Duration;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    DHCP_CLIENT_PORT, DHCP_SERVER_PORT, DhcpMessageType, DhcpPacket, DhcpRepr, EthernetAddress,
    EthernetFrame, EthernetProtocol, EthernetRepr, IpProtocol, Ipv4Packet, Ipv4Repr, UdpPacket,
    UdpRepr,
};

/// The first retransmission timeout. RFC 2131 §4.1 suggests 4 s doubling to
/// 64 s, tuned for crowded campus networks. A deploy network is a quiet
/// provisioning segment and every second of waiting is a second of a machine
/// doing nothing, so start at 1 s and cap at 8 s: a lost packet costs little,
/// and a server that starts late (a switch port still in STP listening) is
/// found within 8 s of it coming up.
const FIRST_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_TIMEOUT: Duration = Duration::from_secs(8);

/// Upper bound of the random delay added to every timeout, so that a rack of
/// machines powered on together does not retransmit in lock step.
const MAX_JITTER_MS: u64 = 250;

/// REQUESTs sent without an ACK or NAK before starting over with a DISCOVER
/// (RFC 2131 §3.1.5: the offer is presumed gone). 4 tries is 1+2+4+8 s.
const REQUEST_ATTEMPTS: u32 = 4;

/// After a NAK, wait this long before DISCOVERing again, so a server that
/// offers and then refuses the same address cannot make us spin.
const NAK_HOLDOFF: Duration = Duration::from_secs(1);

/// BOOTP relays and old servers drop messages shorter than 300 bytes
/// (RFC 1542 §2.1); the options area is padded with zeros (PAD) up to it.
const MIN_BOOTP_LEN: usize = 300;

/// The largest DHCP message we accept: a 1500-byte Ethernet MTU minus the IPv4
/// and UDP headers, because we drop IP fragments.
const MAX_MESSAGE_SIZE: u16 = 1500 - 20 - 8;

const OPT_SUBNET_MASK: u8 = 1;
const OPT_ROUTER: u8 = 3;
const OPT_DNS: u8 = 6;
const OPT_HOSTNAME: u8 = 12;
const OPT_DOMAIN_NAME: u8 = 15;
const OPT_LEASE_TIME: u8 = 51;

const PARAMETER_REQUEST_LIST: [u8; 6] = [
    OPT_SUBNET_MASK,
    OPT_ROUTER,
    OPT_DNS,
    OPT_DOMAIN_NAME,
    OPT_HOSTNAME,
    OPT_LEASE_TIME,
];

/// What the server granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    /// The first router the server listed.
    pub router: Option<Ipv4Addr>,
    pub dns_servers: Vec<Ipv4Addr>,
    /// The server identifier (option 54), or the sender's address without it.
    pub server: Ipv4Addr,
    /// `None` when the server gave no lease time or an infinite one.
    pub lease_duration: Option<Duration>,
    /// Option 15, one or more space-separated domains, for the `search` line.
    pub domain: Option<String>,
    pub hostname: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Discovering,
    Requesting {
        address: Ipv4Addr,
        server: Ipv4Addr,
        /// The OFFER's mask, in case the ACK leaves it out.
        offered_mask: Option<Ipv4Addr>,
    },
    Bound(Lease),
}

/// The client state machine. See the module documentation.
#[derive(Debug, Clone)]
pub struct DhcpClient {
    mac: EthernetAddress,
    xid: u32,
    state: State,
    next_transmit: Duration,
    /// Transmissions in the current state; drives the backoff.
    attempts: u32,
    /// When the first DISCOVER went out: the `secs` field counts from there.
    started: Option<Duration>,
    /// xorshift32 state for the jitter, seeded from the (random) xid so that
    /// randomness still comes from the caller.
    jitter_state: u32,
}

impl DhcpClient {
    /// `xid` must be random: it is the only thing that tells our replies from
    /// another client's, and it seeds the retransmission jitter.
    pub fn new(mac: [u8; 6], xid: u32) -> Self {
        Self {
            mac: EthernetAddress(mac),
            xid,
            state: State::Discovering,
            next_transmit: Duration::ZERO,
            attempts: 0,
            started: None,
            // xorshift has one fixed point, zero.
            jitter_state: if xid == 0 { 0x9e37_79b9 } else { xid },
        }
    }

    /// The lease, once an ACK arrived.
    pub fn lease(&self) -> Option<&Lease> {
        match &self.state {
            State::Bound(lease) => Some(lease),
            _ => None,
        }
    }

    /// When `poll_transmit` has something to send; `Duration::MAX` once bound.
    pub fn poll_at(&self) -> Duration {
        match self.state {
            State::Bound(_) => Duration::MAX,
            _ => self.next_transmit,
        }
    }

    /// The frame to send now, if one is due.
    pub fn poll_transmit(&mut self, now: Duration) -> Option<Vec<u8>> {
        if matches!(self.state, State::Bound(_)) || now < self.next_transmit {
            return None;
        }
        if matches!(self.state, State::Requesting { .. }) && self.attempts >= REQUEST_ATTEMPTS {
            log::debug!("dhcp: no answer to REQUEST, discovering again");
            self.restart(now);
        }
        let started = *self.started.get_or_insert(now);
        let secs = u16::try_from(now.saturating_sub(started).as_secs()).unwrap_or(u16::MAX);
        let frame = match self.state {
            State::Discovering => self.emit(DhcpMessageType::Discover, None, None, secs),
            State::Requesting {
                address, server, ..
            } => self.emit(DhcpMessageType::Request, Some(address), Some(server), secs),
            State::Bound(_) => return None,
        };
        self.attempts = self.attempts.saturating_add(1);
        self.next_transmit = now.saturating_add(self.backoff());
        Some(frame)
    }

    /// Feeds one received frame. Anything that is not a reply to us is
    /// ignored; no input makes this panic.
    pub fn handle_frame(&mut self, frame: &[u8], now: Duration) {
        let Some(reply) = parse_reply(frame, self.xid, self.mac) else {
            return;
        };
        match (&self.state, reply.message_type) {
            (State::Discovering, DhcpMessageType::Offer) => {
                if reply.your_ip.is_unspecified() || reply.your_ip.is_broadcast() {
                    return;
                }
                log::debug!("dhcp: offer of {} from {}", reply.your_ip, reply.server);
                self.state = State::Requesting {
                    address: reply.your_ip,
                    server: reply.server,
                    offered_mask: reply.subnet_mask,
                };
                self.attempts = 0;
                self.next_transmit = now;
            }
            (
                State::Requesting {
                    server,
                    offered_mask,
                    ..
                },
                DhcpMessageType::Ack,
            ) => {
                // Other servers see our broadcast REQUEST too; only the one we
                // chose may answer it.
                if !reply.is_from(*server) || reply.your_ip.is_unspecified() {
                    return;
                }
                let mask = reply
                    .subnet_mask
                    .or(*offered_mask)
                    .unwrap_or_else(|| classful_mask(reply.your_ip));
                let lease = Lease {
                    address: reply.your_ip,
                    prefix_len: prefix_len(mask),
                    router: reply.router,
                    dns_servers: reply.dns_servers,
                    server: reply.server,
                    lease_duration: reply.lease_duration,
                    domain: reply.domain,
                    hostname: reply.hostname,
                };
                self.state = State::Bound(lease);
            }
            (State::Requesting { server, .. }, DhcpMessageType::Nak) => {
                if !reply.is_from(*server) {
                    return;
                }
                log::debug!("dhcp: NAK from {}, discovering again", reply.server);
                self.restart(now.saturating_add(NAK_HOLDOFF));
            }
            _ => {}
        }
    }

    fn restart(&mut self, at: Duration) {
        self.state = State::Discovering;
        self.attempts = 0;
        self.next_transmit = at;
    }

    /// 1 s, 2 s, 4 s, 8 s, 8 s ... after the `attempts`-th transmission, plus jitter.
    fn backoff(&mut self) -> Duration {
        let doublings = self.attempts.saturating_sub(1).min(8);
        let base = FIRST_TIMEOUT
            .saturating_mul(1 << doublings)
            .min(MAX_TIMEOUT);
        base + Duration::from_millis(u64::from(self.next_random()) % MAX_JITTER_MS)
    }

    fn next_random(&mut self) -> u32 {
        let mut x = self.jitter_state;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.jitter_state = x;
        x
    }

    fn emit(
        &self,
        message_type: DhcpMessageType,
        requested_ip: Option<Ipv4Addr>,
        server_identifier: Option<Ipv4Addr>,
        secs: u16,
    ) -> Vec<u8> {
        let repr = DhcpRepr {
            message_type,
            transaction_id: self.xid,
            secs,
            client_hardware_address: self.mac,
            client_ip: Ipv4Addr::UNSPECIFIED,
            your_ip: Ipv4Addr::UNSPECIFIED,
            server_ip: Ipv4Addr::UNSPECIFIED,
            router: None,
            subnet_mask: None,
            relay_agent_ip: Ipv4Addr::UNSPECIFIED,
            // We cannot receive unicast to an address we do not have yet.
            broadcast: true,
            requested_ip,
            client_identifier: None,
            server_identifier,
            parameter_request_list: Some(&PARAMETER_REQUEST_LIST),
            dns_servers: None,
            max_size: Some(MAX_MESSAGE_SIZE),
            lease_duration: None,
            renew_duration: None,
            rebind_duration: None,
            additional_options: &[],
        };
        build_frame(
            &FrameAddrs {
                src_mac: self.mac,
                dst_mac: EthernetAddress::BROADCAST,
                src_ip: Ipv4Addr::UNSPECIFIED,
                dst_ip: Ipv4Addr::BROADCAST,
                src_port: DHCP_CLIENT_PORT,
                dst_port: DHCP_SERVER_PORT,
            },
            &repr,
        )
    }
}

/// Addressing of a DHCP frame.
pub(crate) struct FrameAddrs {
    pub src_mac: EthernetAddress,
    pub dst_mac: EthernetAddress,
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
}

/// Ethernet + IPv4 + UDP + DHCP, with both checksums filled in.
pub(crate) fn build_frame(addrs: &FrameAddrs, repr: &DhcpRepr<'_>) -> Vec<u8> {
    let dhcp_len = repr.buffer_len().max(MIN_BOOTP_LEN);
    let udp_repr = UdpRepr {
        src_port: addrs.src_port,
        dst_port: addrs.dst_port,
    };
    let udp_len = udp_repr.header_len() + dhcp_len;
    let ip_repr = Ipv4Repr {
        src_addr: addrs.src_ip,
        dst_addr: addrs.dst_ip,
        next_header: IpProtocol::Udp,
        payload_len: udp_len,
        hop_limit: 64,
    };
    let eth_repr = EthernetRepr {
        src_addr: addrs.src_mac,
        dst_addr: addrs.dst_mac,
        ethertype: EthernetProtocol::Ipv4,
    };
    let mut buf = vec![0u8; eth_repr.buffer_len() + ip_repr.buffer_len() + udp_len];
    let caps = ChecksumCapabilities::default();
    let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
    eth_repr.emit(&mut eth);
    let mut ip = Ipv4Packet::new_unchecked(eth.payload_mut());
    ip_repr.emit(&mut ip, &caps);
    let mut udp = UdpPacket::new_unchecked(ip.payload_mut());
    udp_repr.emit(
        &mut udp,
        &addrs.src_ip.into(),
        &addrs.dst_ip.into(),
        dhcp_len,
        |payload| {
            // Cannot fail: `payload` is at least `repr.buffer_len()` long. The
            // zeros after the END option are PAD options.
            let _ = repr.emit(&mut DhcpPacket::new_unchecked(payload));
        },
        &caps,
    );
    buf
}

/// The parts of a server reply that the state machine looks at.
#[derive(Debug)]
struct Reply {
    message_type: DhcpMessageType,
    your_ip: Ipv4Addr,
    /// Server identifier, or the IP source address without one.
    server: Ipv4Addr,
    has_server_identifier: bool,
    subnet_mask: Option<Ipv4Addr>,
    router: Option<Ipv4Addr>,
    dns_servers: Vec<Ipv4Addr>,
    lease_duration: Option<Duration>,
    domain: Option<String>,
    hostname: Option<String>,
}

impl Reply {
    fn is_from(&self, server: Ipv4Addr) -> bool {
        !self.has_server_identifier || self.server == server
    }
}

/// Parses a DHCP reply for `xid`/`mac` out of an Ethernet frame; `None` for
/// anything else. Every layer is length-checked before it is read.
fn parse_reply(frame: &[u8], xid: u32, mac: EthernetAddress) -> Option<Reply> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    // Verifies the header checksum and rejects fragments.
    let ip_repr = Ipv4Repr::parse(&ip, &ChecksumCapabilities::default()).ok()?;
    if ip_repr.next_header != IpProtocol::Udp {
        return None;
    }
    // The UDP checksum is not verified: with checksum offload on a virtual
    // bridge (a DHCP server in a neighbouring VM or container) frames arrive
    // at packet sockets with the checksum not yet filled in, the bug ISC
    // dhclient had to work around. Ethernet's CRC already covers corruption.
    let udp = UdpPacket::new_checked(ip.payload()).ok()?;
    if udp.src_port() != DHCP_SERVER_PORT || udp.dst_port() != DHCP_CLIENT_PORT {
        return None;
    }
    let dhcp = DhcpPacket::new_checked(udp.payload()).ok()?;
    let repr = DhcpRepr::parse(&dhcp).ok()?;
    if repr.transaction_id != xid || repr.client_hardware_address != mac {
        return None;
    }

    let mut reply = Reply {
        message_type: repr.message_type,
        your_ip: repr.your_ip,
        server: repr.server_identifier.unwrap_or(ip_repr.src_addr),
        has_server_identifier: repr.server_identifier.is_some(),
        subnet_mask: None,
        router: None,
        dns_servers: Vec::new(),
        lease_duration: None,
        domain: None,
        hostname: None,
    };
    // smoltcp's Repr keeps one router and at most three DNS servers, and
    // drops names, so the options are read here.
    for option in dhcp.options() {
        let data = option.data;
        match option.kind {
            OPT_SUBNET_MASK => reply.subnet_mask = ipv4_addrs(data).next(),
            OPT_ROUTER => reply.router = ipv4_addrs(data).find(|a| !a.is_unspecified()),
            OPT_DNS => {
                reply.dns_servers = ipv4_addrs(data).filter(|a| !a.is_unspecified()).collect();
            }
            OPT_LEASE_TIME => {
                reply.lease_duration = <[u8; 4]>::try_from(data)
                    .ok()
                    .map(u32::from_be_bytes)
                    .filter(|&secs| secs != u32::MAX)
                    .map(|secs| Duration::from_secs(u64::from(secs)));
            }
            OPT_DOMAIN_NAME => reply.domain = domain_list(data),
            OPT_HOSTNAME => reply.hostname = hostname(data),
            _ => {}
        }
    }
    Some(reply)
}

fn ipv4_addrs(data: &[u8]) -> impl Iterator<Item = Ipv4Addr> + '_ {
    data.chunks_exact(4)
        .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')
}

/// These names end up in `/etc/resolv.conf` and the installed system: accept
/// only DNS name characters, so a rogue server cannot inject lines or options.
fn hostname(data: &[u8]) -> Option<String> {
    let data = trim_nuls(data);
    if data.is_empty() || !data.iter().copied().all(is_name_byte) {
        return None;
    }
    String::from_utf8(data.to_vec()).ok()
}

/// Option 15 holds one domain, but some servers put a space-separated list.
fn domain_list(data: &[u8]) -> Option<String> {
    let data = trim_nuls(data);
    let words: Vec<&[u8]> = data
        .split(|b| *b == b' ')
        .filter(|w| !w.is_empty())
        .collect();
    if words.is_empty() || !words.iter().all(|w| w.iter().copied().all(is_name_byte)) {
        return None;
    }
    let joined = words.join(&b' ');
    String::from_utf8(joined).ok()
}

/// Some servers count a terminating NUL in the option length.
fn trim_nuls(mut data: &[u8]) -> &[u8] {
    while let [rest @ .., 0] = data {
        data = rest;
    }
    data
}

/// Leading one bits; a non-contiguous mask (invalid) is cut at its first zero.
pub fn prefix_len(mask: Ipv4Addr) -> u8 {
    u8::try_from(mask.to_bits().leading_ones()).unwrap_or(32)
}

/// The pre-CIDR default for a server that sends no mask at all.
fn classful_mask(address: Ipv4Addr) -> Ipv4Addr {
    match address.octets()[0] {
        0..=127 => Ipv4Addr::new(255, 0, 0, 0),
        128..=191 => Ipv4Addr::new(255, 255, 0, 0),
        _ => Ipv4Addr::new(255, 255, 255, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::DhcpOption;

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    const XID: u32 = 0x1234_5678;
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
    const SERVER_MAC: [u8; 6] = [0x52, 0x55, 0x0a, 0x00, 0x02, 0x02];
    const OFFERED: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    struct ServerReply<'a> {
        message_type: DhcpMessageType,
        xid: u32,
        chaddr: [u8; 6],
        your_ip: Ipv4Addr,
        server_identifier: Option<Ipv4Addr>,
        subnet_mask: Option<Ipv4Addr>,
        router: Option<Ipv4Addr>,
        options: &'a [DhcpOption<'a>],
    }

    impl Default for ServerReply<'_> {
        fn default() -> Self {
            Self {
                message_type: DhcpMessageType::Offer,
                xid: XID,
                chaddr: MAC,
                your_ip: OFFERED,
                server_identifier: Some(SERVER),
                subnet_mask: Some(Ipv4Addr::new(255, 255, 255, 0)),
                router: Some(SERVER),
                options: &[],
            }
        }
    }

    /// A server reply as a broadcast frame, the way QEMU's slirp sends it.
    fn server_frame(reply: &ServerReply<'_>) -> Vec<u8> {
        let repr = DhcpRepr {
            message_type: reply.message_type,
            transaction_id: reply.xid,
            secs: 0,
            client_hardware_address: EthernetAddress(reply.chaddr),
            client_ip: Ipv4Addr::UNSPECIFIED,
            your_ip: reply.your_ip,
            server_ip: Ipv4Addr::UNSPECIFIED,
            router: reply.router,
            subnet_mask: reply.subnet_mask,
            relay_agent_ip: Ipv4Addr::UNSPECIFIED,
            broadcast: true,
            requested_ip: None,
            client_identifier: None,
            server_identifier: reply.server_identifier,
            parameter_request_list: None,
            dns_servers: None,
            max_size: None,
            lease_duration: Some(86_400),
            renew_duration: None,
            rebind_duration: None,
            additional_options: reply.options,
        };
        build_frame(
            &FrameAddrs {
                src_mac: EthernetAddress(SERVER_MAC),
                dst_mac: EthernetAddress::BROADCAST,
                src_ip: SERVER,
                dst_ip: Ipv4Addr::BROADCAST,
                src_port: DHCP_SERVER_PORT,
                dst_port: DHCP_CLIENT_PORT,
            },
            &repr,
        )
    }

    const DNS_OPTION: DhcpOption<'static> = DhcpOption {
        kind: OPT_DNS,
        data: &[10, 0, 2, 3, 1, 1, 1, 1, 8, 8, 8, 8, 9, 9, 9, 9],
    };

    fn offer() -> Vec<u8> {
        server_frame(&ServerReply::default())
    }

    fn ack() -> Vec<u8> {
        server_frame(&ServerReply {
            message_type: DhcpMessageType::Ack,
            options: &[
                DNS_OPTION,
                DhcpOption {
                    kind: OPT_DOMAIN_NAME,
                    data: b"lab.example\0",
                },
                DhcpOption {
                    kind: OPT_HOSTNAME,
                    data: b"node-17",
                },
            ],
            ..ServerReply::default()
        })
    }

    fn nak() -> Vec<u8> {
        server_frame(&ServerReply {
            message_type: DhcpMessageType::Nak,
            your_ip: Ipv4Addr::UNSPECIFIED,
            subnet_mask: None,
            router: None,
            ..ServerReply::default()
        })
    }

    /// What the client sent, parsed back with every layer checked on the way.
    #[derive(Debug)]
    struct Sent {
        kind: DhcpMessageType,
        xid: u32,
        chaddr: EthernetAddress,
        broadcast: bool,
        secs: u16,
        client_ip: Ipv4Addr,
        requested_ip: Option<Ipv4Addr>,
        server_identifier: Option<Ipv4Addr>,
        parameter_request_list: Option<Vec<u8>>,
        max_size: Option<u16>,
    }

    fn sent(frame: &[u8]) -> Sent {
        let eth = EthernetFrame::new_checked(frame).unwrap();
        assert_eq!(eth.dst_addr(), EthernetAddress::BROADCAST);
        assert_eq!(eth.src_addr(), EthernetAddress(MAC));
        assert_eq!(eth.ethertype(), EthernetProtocol::Ipv4);
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        assert!(ip.verify_checksum(), "IPv4 header checksum");
        assert_eq!(ip.src_addr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(ip.dst_addr(), Ipv4Addr::BROADCAST);
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        assert_ne!(udp.checksum(), 0, "UDP checksum filled in");
        assert!(udp.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()));
        assert_eq!((udp.src_port(), udp.dst_port()), (68, 67));
        assert!(udp.payload().len() >= MIN_BOOTP_LEN);
        let dhcp = DhcpPacket::new_checked(udp.payload()).unwrap();
        let repr = DhcpRepr::parse(&dhcp).unwrap();
        Sent {
            kind: repr.message_type,
            xid: repr.transaction_id,
            chaddr: repr.client_hardware_address,
            broadcast: repr.broadcast,
            secs: repr.secs,
            client_ip: repr.client_ip,
            requested_ip: repr.requested_ip,
            server_identifier: repr.server_identifier,
            parameter_request_list: repr.parameter_request_list.map(<[u8]>::to_vec),
            max_size: repr.max_size,
        }
    }

    fn bound_client() -> DhcpClient {
        let mut client = DhcpClient::new(MAC, XID);
        client.poll_transmit(secs(0)).unwrap();
        client.handle_frame(&offer(), secs(0));
        client.poll_transmit(secs(0)).unwrap();
        client.handle_frame(&ack(), secs(0));
        client
    }

    #[test]
    fn discover_parses_back_with_our_identity_and_options() {
        let mut client = DhcpClient::new(MAC, XID);
        let frame = client.poll_transmit(secs(0)).expect("DISCOVER at once");
        let repr = sent(&frame);
        assert_eq!(repr.kind, DhcpMessageType::Discover);
        assert_eq!(repr.xid, XID);
        assert_eq!(repr.chaddr, EthernetAddress(MAC));
        assert!(repr.broadcast);
        assert_eq!(repr.requested_ip, None);
        assert_eq!(repr.server_identifier, None);
        assert_eq!(
            repr.parameter_request_list,
            Some(PARAMETER_REQUEST_LIST.to_vec())
        );
        assert_eq!(repr.max_size, Some(MAX_MESSAGE_SIZE));
    }

    #[test]
    fn full_exchange_yields_lease() {
        let mut client = DhcpClient::new(MAC, XID);
        client.poll_transmit(secs(0)).unwrap();
        assert!(client.lease().is_none());
        client.handle_frame(&offer(), secs(1));
        let frame = client
            .poll_transmit(secs(1))
            .expect("REQUEST right after the OFFER");
        let repr = sent(&frame);
        assert_eq!(repr.kind, DhcpMessageType::Request);
        assert_eq!(repr.requested_ip, Some(OFFERED));
        assert_eq!(repr.server_identifier, Some(SERVER));
        assert_eq!(repr.client_ip, Ipv4Addr::UNSPECIFIED);
        assert_eq!(repr.secs, 1);
        assert_eq!(repr.xid, XID);

        client.handle_frame(&ack(), secs(1));
        let lease = client.lease().expect("bound after ACK");
        assert_eq!(
            *lease,
            Lease {
                address: OFFERED,
                prefix_len: 24,
                router: Some(SERVER),
                dns_servers: vec![
                    Ipv4Addr::new(10, 0, 2, 3),
                    Ipv4Addr::new(1, 1, 1, 1),
                    Ipv4Addr::new(8, 8, 8, 8),
                    Ipv4Addr::new(9, 9, 9, 9),
                ],
                server: SERVER,
                lease_duration: Some(secs(86_400)),
                domain: Some("lab.example".into()),
                hostname: Some("node-17".into()),
            }
        );
        assert_eq!(client.poll_at(), Duration::MAX);
        assert!(client.poll_transmit(secs(100)).is_none());
    }

    #[test]
    fn wrong_xid_is_ignored() {
        let mut client = DhcpClient::new(MAC, XID);
        client.poll_transmit(secs(0)).unwrap();
        client.handle_frame(
            &server_frame(&ServerReply {
                xid: XID ^ 1,
                ..ServerReply::default()
            }),
            secs(0),
        );
        let frame = client.poll_transmit(secs(2)).unwrap();
        assert_eq!(sent(&frame).kind, DhcpMessageType::Discover);
    }

    #[test]
    fn wrong_chaddr_is_ignored() {
        let mut client = DhcpClient::new(MAC, XID);
        client.poll_transmit(secs(0)).unwrap();
        let mut other = MAC;
        other[5] ^= 1;
        client.handle_frame(
            &server_frame(&ServerReply {
                chaddr: other,
                ..ServerReply::default()
            }),
            secs(0),
        );
        assert!(client.poll_transmit(secs(0)).is_none(), "still waiting");
        let frame = client.poll_transmit(secs(2)).unwrap();
        assert_eq!(sent(&frame).kind, DhcpMessageType::Discover);
    }

    #[test]
    fn ack_from_another_server_is_ignored() {
        let mut client = DhcpClient::new(MAC, XID);
        client.poll_transmit(secs(0)).unwrap();
        client.handle_frame(&offer(), secs(0));
        client.poll_transmit(secs(0)).unwrap();
        client.handle_frame(
            &server_frame(&ServerReply {
                message_type: DhcpMessageType::Ack,
                server_identifier: Some(Ipv4Addr::new(10, 0, 2, 99)),
                ..ServerReply::default()
            }),
            secs(0),
        );
        assert!(client.lease().is_none());
        client.handle_frame(&ack(), secs(0));
        assert!(client.lease().is_some());
    }

    #[test]
    fn nak_restarts_discovery() {
        let mut client = DhcpClient::new(MAC, XID);
        client.poll_transmit(secs(0)).unwrap();
        client.handle_frame(&offer(), secs(0));
        client.poll_transmit(secs(0)).unwrap();
        client.handle_frame(&nak(), secs(0));
        assert!(client.lease().is_none());
        assert!(
            client.poll_transmit(secs(0)).is_none(),
            "holds off after a NAK"
        );
        assert_eq!(client.poll_at(), NAK_HOLDOFF);
        let frame = client.poll_transmit(NAK_HOLDOFF).unwrap();
        assert_eq!(sent(&frame).kind, DhcpMessageType::Discover);
        // An ACK now belongs to the abandoned request.
        client.handle_frame(&ack(), NAK_HOLDOFF);
        assert!(client.lease().is_none());
        client.handle_frame(&offer(), NAK_HOLDOFF);
        assert_eq!(
            sent(&client.poll_transmit(NAK_HOLDOFF).unwrap()).kind,
            DhcpMessageType::Request
        );
        client.handle_frame(&ack(), NAK_HOLDOFF);
        assert!(client.lease().is_some());
    }

    #[test]
    fn retransmits_with_growing_capped_backoff() {
        let mut client = DhcpClient::new(MAC, XID);
        let mut now = Duration::ZERO;
        let mut sent_at = Vec::new();
        for _ in 0..7 {
            let at = client.poll_at();
            assert!(at >= now);
            if at > now {
                let just_before = at - Duration::from_millis(1);
                assert!(
                    client.poll_transmit(just_before).is_none(),
                    "nothing before poll_at"
                );
            }
            now = at;
            let frame = client.poll_transmit(now).expect("due at poll_at");
            assert_eq!(sent(&frame).kind, DhcpMessageType::Discover);
            sent_at.push(now);
        }
        let gaps: Vec<Duration> = sent_at.windows(2).map(|w| w[1] - w[0]).collect();
        let jitter = Duration::from_millis(MAX_JITTER_MS);
        for (gap, base) in gaps.iter().zip([1, 2, 4, 8, 8, 8]) {
            assert!(*gap >= secs(base) && *gap < secs(base) + jitter, "{gaps:?}");
        }
    }

    #[test]
    fn unanswered_requests_fall_back_to_discover() {
        let mut client = DhcpClient::new(MAC, XID);
        client.poll_transmit(secs(0)).unwrap();
        client.handle_frame(&offer(), secs(0));
        let mut kinds = Vec::new();
        for _ in 0..=REQUEST_ATTEMPTS {
            let now = client.poll_at();
            kinds.push(sent(&client.poll_transmit(now).unwrap()).kind);
        }
        let mut expected = vec![DhcpMessageType::Request; 4];
        expected.push(DhcpMessageType::Discover);
        assert_eq!(kinds, expected);
    }

    #[test]
    fn truncated_and_garbage_frames_are_ignored() {
        let mut client = DhcpClient::new(MAC, XID);
        client.poll_transmit(secs(0)).unwrap();
        let good = offer();
        for len in 0..good.len() {
            client.handle_frame(&good[..len], secs(0));
        }
        // Flipping any one byte must not panic either (it may still be accepted:
        // the UDP checksum is deliberately not checked).
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0xff;
            DhcpClient::new(MAC, XID).handle_frame(&bad, secs(0));
        }
        let mut x = 0x2545_f491_u32;
        for len in [0, 1, 13, 14, 33, 34, 41, 42, 281, 282, 600, 1514] {
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x.to_le_bytes()[0]
                })
                .collect();
            client.handle_frame(&junk, secs(0));
        }
        assert!(matches!(client.state, State::Discovering));
        // The full frame still works afterwards.
        client.handle_frame(&good, secs(0));
        assert!(matches!(client.state, State::Requesting { .. }));
    }

    #[test]
    fn our_own_broadcast_is_not_a_reply() {
        let mut client = DhcpClient::new(MAC, XID);
        let discover = client.poll_transmit(secs(0)).unwrap();
        client.handle_frame(&discover, secs(0));
        assert!(matches!(client.state, State::Discovering));
    }

    #[test]
    fn ack_without_mask_uses_the_offered_one() {
        let mut client = DhcpClient::new(MAC, XID);
        client.poll_transmit(secs(0)).unwrap();
        client.handle_frame(
            &server_frame(&ServerReply {
                subnet_mask: Some(Ipv4Addr::new(255, 255, 240, 0)),
                ..ServerReply::default()
            }),
            secs(0),
        );
        client.poll_transmit(secs(0)).unwrap();
        client.handle_frame(
            &server_frame(&ServerReply {
                message_type: DhcpMessageType::Ack,
                subnet_mask: None,
                router: None,
                ..ServerReply::default()
            }),
            secs(0),
        );
        let lease = client.lease().unwrap();
        assert_eq!(lease.prefix_len, 20);
        assert_eq!(lease.router, None);
        assert!(lease.dns_servers.is_empty());
    }

    #[test]
    fn bound_client_ignores_further_replies() {
        let mut client = bound_client();
        let before = client.lease().cloned();
        client.handle_frame(&nak(), secs(5));
        assert_eq!(client.lease().cloned(), before);
    }

    #[test]
    fn names_that_could_inject_resolv_conf_lines_are_dropped() {
        assert_eq!(hostname(b"node-1\0"), Some("node-1".into()));
        assert_eq!(hostname(b"evil\nnameserver 6.6.6.6"), None);
        assert_eq!(hostname(b""), None);
        assert_eq!(
            domain_list(b"a.example  b.example"),
            Some("a.example b.example".into())
        );
        assert_eq!(domain_list(b"a.example\noptions ndots:9"), None);
        assert_eq!(domain_list(b"\0"), None);
    }

    #[test]
    fn prefix_lengths() {
        assert_eq!(prefix_len(Ipv4Addr::new(255, 255, 255, 0)), 24);
        assert_eq!(prefix_len(Ipv4Addr::new(255, 255, 255, 255)), 32);
        assert_eq!(prefix_len(Ipv4Addr::UNSPECIFIED), 0);
        assert_eq!(prefix_len(Ipv4Addr::new(255, 0, 255, 0)), 8);
        assert_eq!(
            classful_mask(Ipv4Addr::new(172, 16, 0, 1)),
            Ipv4Addr::new(255, 255, 0, 0)
        );
    }
}
