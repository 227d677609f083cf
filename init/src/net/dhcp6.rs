//! A sans-IO DHCPv6 client (RFC 8415) for when the router advertisement says
//! "managed": SOLICIT -> ADVERTISE -> REQUEST -> REPLY for one IA_NA address,
//! asking for DNS servers (option 23, RFC 3646). Like [`super::dhcp`], it is
//! fed UDP payloads and the current time and asked for the next payload to
//! send (to `ff02::1:2` port 547 from port 546); it owns no socket or clock.
//!
//! No renewal and no Rapid Commit: a deploy is over well within the lease.

use std::net::Ipv6Addr;
use std::time::Duration;

/// Message types (RFC 8415 §7.3).
const SOLICIT: u8 = 1;
const ADVERTISE: u8 = 2;
const REQUEST: u8 = 3;
const REPLY: u8 = 7;
/// Option codes (RFC 8415 §21, RFC 3646).
const OPTION_CLIENTID: u16 = 1;
const OPTION_SERVERID: u16 = 2;
const OPTION_IA_NA: u16 = 3;
const OPTION_IAADDR: u16 = 5;
const OPTION_ORO: u16 = 6;
const OPTION_ELAPSED_TIME: u16 = 8;
const OPTION_STATUS_CODE: u16 = 13;
const OPTION_DNS_SERVERS: u16 = 23;
/// DUID-LL (type 3) over Ethernet (hardware type 1), RFC 8415 §11.4.
const DUID_LL: u16 = 3;
const HARDWARE_ETHERNET: u16 = 1;
/// The IAID: one IA_NA per interface, so any constant is unique.
const IAID: u32 = 1;

/// The first retransmission timeout, doubled up to [`MAX_TIMEOUT`]: the
/// RFC's SOL_MAX_RT of an hour suits a campus, not a machine waiting to be
/// deployed (same reasoning as the DHCPv4 client).
const FIRST_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_TIMEOUT: Duration = Duration::from_secs(8);
/// REQUESTs without a REPLY before soliciting again (REQ_MAX_RC is 10).
const REQUEST_ATTEMPTS: u32 = 4;

/// What the server granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease6 {
    pub address: Ipv6Addr,
    /// Seconds; 0xffffffff is infinite.
    pub valid_lifetime: u32,
    pub dns_servers: Vec<Ipv6Addr>,
    /// The server's DUID, for the log.
    pub server_id: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Soliciting,
    Requesting { server_id: Vec<u8>, attempts: u32 },
    Bound(Lease6),
}

/// The client state machine. One transaction per message, as the RFC asks.
#[derive(Debug, Clone)]
pub struct Dhcp6Client {
    duid: Vec<u8>,
    transaction_id: [u8; 3],
    state: State,
    /// When the current exchange began, for the elapsed-time option.
    exchange_start: Option<Duration>,
    next_transmit: Duration,
    timeout: Duration,
}

impl Dhcp6Client {
    /// A client for the interface with `mac`; `transaction_id` must be random.
    pub fn new(mac: [u8; 6], transaction_id: [u8; 3]) -> Self {
        let mut duid = Vec::with_capacity(10);
        duid.extend(DUID_LL.to_be_bytes());
        duid.extend(HARDWARE_ETHERNET.to_be_bytes());
        duid.extend(mac);
        Self {
            duid,
            transaction_id,
            state: State::Soliciting,
            exchange_start: None,
            next_transmit: Duration::ZERO,
            timeout: FIRST_TIMEOUT,
        }
    }

    /// The lease, once the server has confirmed it.
    pub fn lease(&self) -> Option<&Lease6> {
        match &self.state {
            State::Bound(lease) => Some(lease),
            _ => None,
        }
    }

    /// When [`poll_transmit`](Self::poll_transmit) next has something to send.
    pub fn poll_at(&self) -> Duration {
        match self.state {
            State::Bound(_) => Duration::MAX,
            _ => self.next_transmit,
        }
    }

    /// The next message to send, if one is due at `now`.
    pub fn poll_transmit(&mut self, now: Duration) -> Option<Vec<u8>> {
        if now < self.next_transmit || self.lease().is_some() {
            return None;
        }
        if let State::Requesting { attempts, .. } = &mut self.state {
            if *attempts >= REQUEST_ATTEMPTS {
                log::warn!("dhcpv6: no reply to {REQUEST_ATTEMPTS} requests, soliciting again");
                self.state = State::Soliciting;
                self.new_exchange();
            } else {
                *attempts += 1;
            }
        }
        let start = *self.exchange_start.get_or_insert(now);
        // Hundredths of a second, saturating at 0xffff (RFC 8415 §21.9).
        let elapsed = u16::try_from(now.saturating_sub(start).as_millis() / 10).unwrap_or(u16::MAX);
        let message = match &self.state {
            State::Soliciting => self.message(SOLICIT, None, elapsed),
            State::Requesting { server_id, .. } => self.message(REQUEST, Some(server_id), elapsed),
            State::Bound(_) => return None,
        };
        self.next_transmit = now + self.timeout;
        self.timeout = (self.timeout * 2).min(MAX_TIMEOUT);
        Some(message)
    }

    /// Feeds one UDP payload received on port 546.
    pub fn handle(&mut self, payload: &[u8], now: Duration) {
        let Some(reply) = parse_reply(payload, self.transaction_id, &self.duid) else {
            return;
        };
        match (&self.state, reply.kind) {
            (State::Soliciting, ADVERTISE) => {
                if reply.status != 0 || reply.address.is_none() {
                    log::warn!(
                        "dhcpv6: advertise without an address (status {})",
                        reply.status
                    );
                    return;
                }
                self.state = State::Requesting {
                    server_id: reply.server_id,
                    attempts: 0,
                };
                self.new_exchange();
                self.next_transmit = now;
            }
            (State::Requesting { server_id, .. }, REPLY) if *server_id == reply.server_id => {
                match (reply.status, reply.address) {
                    (0, Some((address, valid_lifetime))) => {
                        self.state = State::Bound(Lease6 {
                            address,
                            valid_lifetime,
                            dns_servers: reply.dns_servers,
                            server_id: reply.server_id,
                        });
                    }
                    (status, _) => {
                        log::warn!("dhcpv6: the server refused the request (status {status})");
                        self.state = State::Soliciting;
                        self.new_exchange();
                        self.next_transmit = now + FIRST_TIMEOUT;
                    }
                }
            }
            _ => {}
        }
    }

    fn new_exchange(&mut self) {
        // A new transaction id per exchange; deriving it keeps the state
        // machine free of randomness.
        let id = u32::from_be_bytes([
            0,
            self.transaction_id[0],
            self.transaction_id[1],
            self.transaction_id[2],
        ]);
        let next = id.wrapping_mul(0x0001_0dcd).wrapping_add(1) & 0x00ff_ffff;
        let bytes = next.to_be_bytes();
        self.transaction_id = [bytes[1], bytes[2], bytes[3]];
        self.exchange_start = None;
        self.timeout = FIRST_TIMEOUT;
    }

    fn message(&self, kind: u8, server_id: Option<&[u8]>, elapsed: u16) -> Vec<u8> {
        let mut message = vec![kind];
        message.extend(self.transaction_id);
        put_option(&mut message, OPTION_CLIENTID, &self.duid);
        if let Some(server_id) = server_id {
            put_option(&mut message, OPTION_SERVERID, server_id);
        }
        // IA_NA: IAID, T1 = T2 = 0 (the server decides), no address hint.
        let mut ia_na = IAID.to_be_bytes().to_vec();
        ia_na.extend([0; 8]);
        put_option(&mut message, OPTION_IA_NA, &ia_na);
        put_option(&mut message, OPTION_ORO, &OPTION_DNS_SERVERS.to_be_bytes());
        put_option(&mut message, OPTION_ELAPSED_TIME, &elapsed.to_be_bytes());
        message
    }
}

fn put_option(message: &mut Vec<u8>, code: u16, data: &[u8]) {
    message.extend(code.to_be_bytes());
    // Options here are a few bytes; a server ID longer than 64 KiB is not
    // accepted by `parse_reply` in the first place.
    message.extend(u16::try_from(data.len()).unwrap_or(u16::MAX).to_be_bytes());
    message.extend(data);
}

/// The parts of an ADVERTISE or REPLY the client uses.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ServerMessage {
    kind: u8,
    server_id: Vec<u8>,
    /// The first IA_NA address and its valid lifetime.
    address: Option<(Ipv6Addr, u32)>,
    /// The top-level status code, or the IA_NA's (0 = success).
    status: u16,
    dns_servers: Vec<Ipv6Addr>,
}

/// Parses a server message for `transaction_id` addressed to `client_duid`;
/// `None` for anything else or anything malformed. Never panics.
fn parse_reply(
    payload: &[u8],
    transaction_id: [u8; 3],
    client_duid: &[u8],
) -> Option<ServerMessage> {
    let (&kind, rest) = payload.split_first()?;
    if kind != ADVERTISE && kind != REPLY || rest.get(..3)? != transaction_id {
        return None;
    }
    let mut message = ServerMessage {
        kind,
        server_id: Vec::new(),
        address: None,
        status: 0,
        dns_servers: Vec::new(),
    };
    let mut client_matches = false;
    for (code, data) in options(rest.get(3..)?)? {
        match code {
            OPTION_CLIENTID => client_matches = data == client_duid,
            OPTION_SERVERID => message.server_id = data.to_vec(),
            OPTION_STATUS_CODE => {
                message.status = u16::from_be_bytes(data.get(..2)?.try_into().ok()?)
            }
            OPTION_DNS_SERVERS => message.dns_servers.extend(
                data.chunks_exact(16)
                    .filter_map(|chunk| <[u8; 16]>::try_from(chunk).ok().map(Ipv6Addr::from)),
            ),
            OPTION_IA_NA if message.address.is_none() => {
                // IAID, T1, T2, then options.
                for (code, data) in options(data.get(12..)?)? {
                    match code {
                        OPTION_IAADDR => {
                            let octets: [u8; 16] = data.get(..16)?.try_into().ok()?;
                            let valid = u32::from_be_bytes(data.get(20..24)?.try_into().ok()?);
                            message.address = Some((Ipv6Addr::from(octets), valid));
                        }
                        OPTION_STATUS_CODE if message.status == 0 => {
                            message.status = u16::from_be_bytes(data.get(..2)?.try_into().ok()?);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    (client_matches && !message.server_id.is_empty()).then_some(message)
}

/// Splits a DHCPv6 options area into `(code, data)`; `None` if an option
/// runs past the end.
fn options(mut bytes: &[u8]) -> Option<Vec<(u16, &[u8])>> {
    let mut found = Vec::new();
    while !bytes.is_empty() {
        let code = u16::from_be_bytes(bytes.get(..2)?.try_into().ok()?);
        let len = usize::from(u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?));
        found.push((code, bytes.get(4..4 + len)?));
        bytes = &bytes[4 + len..];
    }
    Some(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
    const SERVER_DUID: &[u8] = &[0, 3, 0, 1, 0x52, 0x55, 0, 0, 0, 1];

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// A server message answering `request` (its transaction id and client ID).
    fn answer(kind: u8, request: &[u8], status: u16, with_address: bool) -> Vec<u8> {
        let mut message = vec![kind];
        message.extend(&request[1..4]);
        let client_id = options(&request[4..])
            .unwrap()
            .into_iter()
            .find(|(code, _)| *code == OPTION_CLIENTID)
            .unwrap()
            .1
            .to_vec();
        put_option(&mut message, OPTION_SERVERID, SERVER_DUID);
        put_option(&mut message, OPTION_CLIENTID, &client_id);
        let mut ia_na = IAID.to_be_bytes().to_vec();
        ia_na.extend([0, 0, 0x0e, 0x10, 0, 0, 0x15, 0x18]);
        if with_address {
            let mut iaaddr = "2001:db8::15"
                .parse::<Ipv6Addr>()
                .unwrap()
                .octets()
                .to_vec();
            iaaddr.extend(3600u32.to_be_bytes());
            iaaddr.extend(7200u32.to_be_bytes());
            put_option(&mut ia_na, OPTION_IAADDR, &iaaddr);
        }
        if status != 0 {
            let mut code = status.to_be_bytes().to_vec();
            code.extend(b"NoAddrsAvail");
            put_option(&mut ia_na, OPTION_STATUS_CODE, &code);
        }
        put_option(&mut message, OPTION_IA_NA, &ia_na);
        let mut dns = "2001:db8::53"
            .parse::<Ipv6Addr>()
            .unwrap()
            .octets()
            .to_vec();
        dns.extend("2001:db8::54".parse::<Ipv6Addr>().unwrap().octets());
        put_option(&mut message, OPTION_DNS_SERVERS, &dns);
        message
    }

    #[test]
    fn solicit_has_the_golden_bytes() {
        let mut client = Dhcp6Client::new(MAC, [0xab, 0xcd, 0xef]);
        let solicit = client.poll_transmit(Duration::ZERO).unwrap();
        #[rustfmt::skip]
        let expected: &[u8] = &[
            SOLICIT, 0xab, 0xcd, 0xef,
            0, 1, 0, 10, 0, 3, 0, 1, 0x52, 0x54, 0, 0x12, 0x34, 0x56, // client ID: DUID-LL
            0, 3, 0, 12, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0,         // IA_NA, IAID 1
            0, 6, 0, 2, 0, 23,                                        // ORO: DNS
            0, 8, 0, 2, 0, 0,                                         // elapsed 0
        ];
        assert_eq!(solicit, expected);
    }

    #[test]
    fn full_exchange_gives_a_lease() {
        let mut client = Dhcp6Client::new(MAC, [1, 2, 3]);
        let solicit = client.poll_transmit(Duration::ZERO).unwrap();
        assert_eq!(client.poll_transmit(Duration::ZERO), None, "not due yet");
        client.handle(&answer(ADVERTISE, &solicit, 0, true), secs(0));
        let request = client.poll_transmit(secs(0)).unwrap();
        assert_eq!(request[0], REQUEST);
        assert_ne!(request[1..4], solicit[1..4], "a new transaction");
        let server_id = options(&request[4..])
            .unwrap()
            .into_iter()
            .find(|(code, _)| *code == OPTION_SERVERID)
            .map(|(_, data)| data.to_vec());
        assert_eq!(server_id.as_deref(), Some(SERVER_DUID));
        // An ADVERTISE for the old transaction or a REPLY to it is ignored.
        client.handle(&answer(REPLY, &solicit, 0, true), secs(0));
        assert_eq!(client.lease(), None);
        client.handle(&answer(REPLY, &request, 0, true), secs(0));
        let lease = client.lease().unwrap();
        assert_eq!(lease.address, "2001:db8::15".parse::<Ipv6Addr>().unwrap());
        assert_eq!(lease.valid_lifetime, 7200);
        assert_eq!(
            lease.dns_servers,
            [
                "2001:db8::53".parse::<Ipv6Addr>().unwrap(),
                "2001:db8::54".parse().unwrap()
            ]
        );
        assert_eq!(client.poll_at(), Duration::MAX);
        assert_eq!(client.poll_transmit(secs(100)), None);
    }

    #[test]
    fn retransmits_with_a_growing_elapsed_time() {
        let mut client = Dhcp6Client::new(MAC, [1, 2, 3]);
        let mut sent = Vec::new();
        for now in 0..40 {
            if let Some(message) = client.poll_transmit(secs(now)) {
                sent.push((now, message));
            }
        }
        let times: Vec<u64> = sent.iter().map(|(t, _)| *t).collect();
        assert_eq!(times, [0, 1, 3, 7, 15, 23, 31, 39]);
        let elapsed = |m: &[u8]| u16::from_be_bytes([m[m.len() - 2], m[m.len() - 1]]);
        assert_eq!(elapsed(&sent[1].1), 100);
        assert_eq!(elapsed(&sent[3].1), 700);
        assert!(
            sent.iter().all(|(_, m)| m[1..4] == [1, 2, 3]),
            "one transaction"
        );
    }

    #[test]
    fn refusals_and_strangers_are_not_leases() {
        let mut client = Dhcp6Client::new(MAC, [1, 2, 3]);
        let solicit = client.poll_transmit(Duration::ZERO).unwrap();
        // An ADVERTISE with NoAddrsAvail is not taken.
        client.handle(&answer(ADVERTISE, &solicit, 2, false), secs(0));
        assert_eq!(client.poll_transmit(secs(1)).unwrap()[0], SOLICIT);
        // One for another client is ignored.
        let mut other = Dhcp6Client::new([2; 6], [1, 2, 3]);
        let theirs = other.poll_transmit(Duration::ZERO).unwrap();
        client.handle(&answer(ADVERTISE, &theirs, 0, true), secs(1));
        assert_eq!(client.poll_transmit(secs(3)).unwrap()[0], SOLICIT);
        // A REPLY refusing the REQUEST starts over.
        client.handle(&answer(ADVERTISE, &solicit, 0, true), secs(3));
        let request = client.poll_transmit(secs(3)).unwrap();
        client.handle(&answer(REPLY, &request, 2, false), secs(3));
        assert_eq!(client.lease(), None);
        assert_eq!(client.poll_transmit(secs(3)), None, "held off");
        assert_eq!(client.poll_transmit(secs(4)).unwrap()[0], SOLICIT);
    }

    #[test]
    fn unanswered_requests_fall_back_to_solicit() {
        let mut client = Dhcp6Client::new(MAC, [1, 2, 3]);
        let solicit = client.poll_transmit(Duration::ZERO).unwrap();
        client.handle(&answer(ADVERTISE, &solicit, 0, true), secs(0));
        let kinds: Vec<u8> = (0..30)
            .filter_map(|now| client.poll_transmit(secs(now)))
            .map(|m| m[0])
            .collect();
        assert_eq!(kinds[..5], [REQUEST, REQUEST, REQUEST, REQUEST, SOLICIT]);
    }

    #[test]
    fn truncated_messages_never_panic() {
        let mut client = Dhcp6Client::new(MAC, [1, 2, 3]);
        let solicit = client.poll_transmit(Duration::ZERO).unwrap();
        let good = answer(ADVERTISE, &solicit, 0, true);
        let parsed: Vec<usize> = (0..=good.len())
            .filter(|len| parse_reply(&good[..*len], [1, 2, 3], &client.duid).is_some())
            .collect();
        // Only cuts at an option boundary after both IDs parse: without
        // IA_NA and DNS (the state machine ignores an address-less offer),
        // without DNS (36 bytes), or whole.
        assert_eq!(parsed, [4 + 14 + 14, good.len() - 36, good.len()]);
    }
}
