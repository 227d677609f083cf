//! One DHCPv4 client run over a packet socket (or any [`FrameLink`]) until
//! it holds a lease, times out or is cancelled.

use std::fs;
use std::io::Read as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result, bail};

use super::apply::describe_lease;
use super::links::format_mac;
use super::{DhcpClient, Lease, sys};

/// How often a DHCP worker checks whether it is still wanted.
const CANCEL_POLL: Duration = Duration::from_millis(500);

/// Runs DHCP on one interface over a fresh packet socket, dropped on return.
pub(super) fn dhcp_on(
    name: &str,
    mac: [u8; 6],
    timeout: Duration,
    stop: &AtomicBool,
) -> Result<Lease> {
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
pub(super) fn random_xid(mac: [u8; 6]) -> u32 {
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

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::collections::VecDeque;
    use std::net::Ipv4Addr;
    use std::rc::Rc;

    use super::*;
    use crate::net::dhcp;
    use crate::net::links::tests::{MAC0, MAC1};

    #[test]
    fn xid_fallback_depends_on_mac_and_time() {
        assert_ne!(xid_from(MAC0, 1), xid_from(MAC1, 1));
        assert_ne!(xid_from(MAC0, 1), xid_from(MAC0, 2));
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
