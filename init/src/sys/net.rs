//! Link-layer sockets and interface configuration: the syscalls behind
//! `net`. Plain ioctls rather than rtnetlink, because a handful of fixed
//! requests do not justify a netlink message builder.

use std::ffi::CString;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr;
use std::time::Duration;

use libc::{c_char, c_int, c_short, c_ulong, c_ushort, c_void, sockaddr};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};

// Kernel ABI values (<linux/socket.h>, <linux/if_ether.h>, <linux/sockios.h>),
// spelled in the types the structs take so no cast is needed. A test checks
// them against libc.
const AF_INET: libc::sa_family_t = 2;
const AF_PACKET: c_ushort = 17;
const ETH_P_IP: u16 = 0x0800;
// `libc::Ioctl` is `c_ulong` on glibc and `c_int` on musl.
const SIOCGIFFLAGS: libc::Ioctl = 0x8913;
const SIOCSIFFLAGS: libc::Ioctl = 0x8914;
const SIOCSIFADDR: libc::Ioctl = 0x8916;
const SIOCSIFNETMASK: libc::Ioctl = 0x891c;
const SIOCADDRT: libc::Ioctl = 0x890b;
const SIOCSIFMTU: libc::Ioctl = 0x8922;
// Not in the libc crate for Linux; <linux/sockios.h>.
const SIOCSIFVLAN: libc::Ioctl = 0x8983;
// <linux/if_vlan.h> `enum vlan_ioctl_cmds`.
const ADD_VLAN_CMD: c_int = 0;
const IFF_UP: c_short = 0x1;
const RTF_UP: c_ushort = 0x1;
const RTF_GATEWAY: c_ushort = 0x2;
const RTF_HOST: c_ushort = 0x4;

/// An AF_PACKET socket bound to one interface, carrying whole Ethernet
/// frames of IPv4 packets. Closed on drop.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    pub fn open(interface: &str) -> io::Result<Self> {
        let fd = rustix::net::socket_with(
            AddressFamily::PACKET,
            SocketType::RAW,
            SocketFlags::CLOEXEC,
            Some(rustix::net::eth::IP),
        )?;
        let ifindex = rustix::net::netdevice::name_to_index(&fd, interface)?;
        let address = libc::sockaddr_ll {
            sll_family: AF_PACKET,
            sll_protocol: ETH_P_IP.to_be(),
            sll_ifindex: i32::try_from(ifindex).map_err(|_| io::ErrorKind::InvalidInput)?,
            sll_hatype: 0,
            sll_pkttype: 0,
            sll_halen: 0,
            sll_addr: [0; 8],
        };
        let len = libc::socklen_t::try_from(size_of::<libc::sockaddr_ll>())
            .map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: `address` is a fully initialised sockaddr_ll that lives
        // across the call, and `len` is its exact size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                ptr::from_ref(&address).cast::<sockaddr>(),
                len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd })
    }

    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        let sent = rustix::net::send(&self.fd, frame, SendFlags::empty())?;
        if sent == frame.len() {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "short send on packet socket",
            ))
        }
    }

    /// Waits up to `timeout` for one frame; `None` when none came.
    pub fn recv_timeout(&self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<usize>> {
        // A zero SO_RCVTIMEO means "block forever".
        let timeout = timeout.max(Duration::from_millis(1));
        rustix::net::sockopt::set_socket_timeout(
            &self.fd,
            rustix::net::sockopt::Timeout::Recv,
            Some(timeout),
        )?;
        match rustix::net::recv(&self.fd, buf, RecvFlags::empty()) {
            Ok((_, len)) => Ok(Some(len)),
            Err(e) if e == rustix::io::Errno::AGAIN || e == rustix::io::Errno::INTR => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// A raw ICMPv6 socket: sends router solicitations and receives every
/// ICMPv6 message the host gets (router advertisements among them), with
/// the interface index it came in on. Closed on drop.
#[derive(Debug)]
pub struct Icmp6Socket {
    fd: OwnedFd,
}

/// All-routers multicast (RFC 4291).
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);

impl Icmp6Socket {
    /// Fails when the kernel has no IPv6.
    pub fn open() -> io::Result<Self> {
        let fd = rustix::net::socket_with(
            AddressFamily::INET6,
            SocketType::RAW,
            SocketFlags::CLOEXEC,
            Some(rustix::net::ipproto::ICMPV6),
        )?;
        // Neighbour discovery messages must carry hop limit 255 (RFC 4861 §6.1.1).
        rustix::net::sockopt::set_ipv6_multicast_hops(&fd, 255)?;
        rustix::net::sockopt::set_ipv6_unicast_hops(&fd, Some(255))?;
        Ok(Self { fd })
    }

    /// Sends `message` to all routers on the interface with index `ifindex`.
    /// The kernel computes the ICMPv6 checksum.
    pub fn send_to_routers(&self, message: &[u8], ifindex: u32) -> io::Result<()> {
        let to = SocketAddrV6::new(ALL_ROUTERS, 0, 0, ifindex);
        rustix::net::sendto(&self.fd, message, SendFlags::empty(), &to)?;
        Ok(())
    }

    /// Waits up to `timeout` for one ICMPv6 message: its length and the
    /// index of the interface it came from (the scope of its link-local
    /// source; 0 for a global source).
    pub fn recv_timeout(
        &self,
        buf: &mut [u8],
        timeout: Duration,
    ) -> io::Result<Option<(usize, u32)>> {
        let timeout = timeout.max(Duration::from_millis(1));
        rustix::net::sockopt::set_socket_timeout(
            &self.fd,
            rustix::net::sockopt::Timeout::Recv,
            Some(timeout),
        )?;
        match rustix::net::recvfrom(&self.fd, buf, RecvFlags::empty()) {
            Ok((_, len, from)) => {
                let scope = from
                    .and_then(|from| SocketAddrV6::try_from(from).ok())
                    .map_or(0, |from| from.scope_id());
                Ok(Some((len, scope)))
            }
            Err(e) if e == rustix::io::Errno::AGAIN || e == rustix::io::Errno::INTR => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// The DHCPv6 client's port; servers listen on 547 at `ff02::1:2` (RFC 8415 §7).
pub const DHCP6_CLIENT_PORT: u16 = 546;
pub const DHCP6_SERVER_PORT: u16 = 547;
/// All_DHCP_Relay_Agents_and_Servers (RFC 8415 §7.1).
pub const DHCP6_SERVERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);

/// A UDP socket on the DHCPv6 client port of one interface's link-local
/// address, sending to the all-servers multicast group on that interface.
#[derive(Debug)]
pub struct Dhcp6Socket {
    socket: UdpSocket,
    ifindex: u32,
}

impl Dhcp6Socket {
    /// Binds `[link_local%ifindex]:546`; the address must have passed DAD.
    pub fn open(link_local: Ipv6Addr, ifindex: u32) -> io::Result<Self> {
        let socket = UdpSocket::bind(SocketAddrV6::new(link_local, DHCP6_CLIENT_PORT, 0, ifindex))?;
        Ok(Self { socket, ifindex })
    }

    /// Sends one message to `ff02::1:2` port 547.
    pub fn send(&self, message: &[u8]) -> io::Result<()> {
        let to = SocketAddrV6::new(DHCP6_SERVERS, DHCP6_SERVER_PORT, 0, self.ifindex);
        self.socket.send_to(message, to)?;
        Ok(())
    }

    /// Waits up to `timeout` for one datagram; `None` when none came.
    pub fn recv_timeout(&self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<usize>> {
        self.socket
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        match self.socket.recv(buf) {
            Ok(len) => Ok(Some(len)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

/// The kernel's index of `interface`.
pub fn interface_index(interface: &str) -> io::Result<u32> {
    let fd = control_socket()?;
    Ok(rustix::net::netdevice::name_to_index(&fd, interface)?)
}

/// Writes `/proc/sys/net/ipv6/conf/<interface>/<key>`, e.g. `accept_ra`.
pub fn set_ipv6_conf(interface: &str, key: &str, value: &str) -> io::Result<()> {
    if interface.contains('/') || key.contains('/') {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    std::fs::write(format!("/proc/sys/net/ipv6/conf/{interface}/{key}"), value)
}

/// `struct in6_ifreq` from <linux/ipv6.h>.
#[repr(C)]
struct In6Ifreq {
    ifr6_addr: libc::in6_addr,
    ifr6_prefixlen: u32,
    ifr6_ifindex: c_int,
}

/// Adds `address/prefix_len` to `interface`. An address that is already
/// there is not an error, so bring-up can be retried.
pub fn add_ipv6_address(interface: &str, address: Ipv6Addr, prefix_len: u8) -> io::Result<()> {
    let fd = rustix::net::socket_with(
        AddressFamily::INET6,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    let mut req = In6Ifreq {
        ifr6_addr: libc::in6_addr {
            s6_addr: address.octets(),
        },
        ifr6_prefixlen: u32::from(prefix_len),
        ifr6_ifindex: c_int::try_from(interface_index(interface)?)
            .map_err(|_| io::ErrorKind::InvalidInput)?,
    };
    // SAFETY: SIOCSIFADDR on an AF_INET6 socket takes a `struct in6_ifreq`
    // (layout checked by a test); `req` is initialised and outlives the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), SIOCSIFADDR, ptr::from_mut(&mut req)) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EEXIST) {
        Ok(())
    } else {
        Err(err)
    }
}

/// Sets IFF_UP on `interface`.
pub fn set_link_up(interface: &str) -> io::Result<()> {
    let fd = control_socket()?;
    let mut req = ifreq(interface)?;
    ioctl(&fd, SIOCGIFFLAGS, &mut req)?;
    // SAFETY: SIOCGIFFLAGS succeeded, so the kernel filled `ifru_flags`.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    if flags & IFF_UP != 0 {
        return Ok(());
    }
    req.ifr_ifru.ifru_flags = flags | IFF_UP;
    ioctl(&fd, SIOCSIFFLAGS, &mut req)
}

/// Sets the primary IPv4 address and netmask of `interface`; the kernel adds
/// the on-link subnet route itself.
pub fn set_ipv4_address(interface: &str, address: Ipv4Addr, netmask: Ipv4Addr) -> io::Result<()> {
    let fd = control_socket()?;
    let mut req = ifreq(interface)?;
    req.ifr_ifru.ifru_addr = sockaddr_in(address);
    ioctl(&fd, SIOCSIFADDR, &mut req)?;
    // SIOCSIFADDR installed a classful mask; replace it.
    let mut req = ifreq(interface)?;
    req.ifr_ifru.ifru_netmask = sockaddr_in(netmask);
    ioctl(&fd, SIOCSIFNETMASK, &mut req)
}

/// Sets the MTU of `interface`.
pub fn set_mtu(interface: &str, mtu: u32) -> io::Result<()> {
    let fd = control_socket()?;
    let mut req = ifreq(interface)?;
    req.ifr_ifru.ifru_mtu = c_int::try_from(mtu).map_err(|_| io::ErrorKind::InvalidInput)?;
    ioctl(&fd, SIOCSIFMTU, &mut req)
}

/// Creates the 802.1Q interface `<parent>.<vid>` (the kernel's default
/// naming) on `parent`; needs the 8021q module. An interface that already
/// exists is not an error, so bring-up can be retried.
pub fn add_vlan(parent: &str, vid: u16) -> io::Result<()> {
    let fd = control_socket()?;
    let mut args = VlanIoctlArgs {
        cmd: ADD_VLAN_CMD,
        device1: [0; 24],
        u: [0; 24],
        vlan_qos: 0,
    };
    let name = parent.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid interface name {parent:?}"),
        ));
    }
    for (dst, src) in args.device1.iter_mut().zip(name) {
        *dst = c_char::from_ne_bytes([*src]);
    }
    // `u.VID` is an int at the start of the union.
    args.u[..4].copy_from_slice(&c_int::from(vid).to_ne_bytes());
    // SAFETY: `args` is a fully initialised `struct vlan_ioctl_args` (layout
    // checked by a test) that lives across the call; SIOCSIFVLAN only reads
    // and writes within it.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), SIOCSIFVLAN, ptr::from_mut(&mut args)) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EEXIST) {
        Ok(())
    } else {
        Err(err)
    }
}

/// `struct vlan_ioctl_args` from <linux/if_vlan.h>. The union `u` (device2,
/// VID, skb_priority, name_type, bind_type, flag) is kept as its 24 bytes;
/// it starts at offset 28, already aligned for its `int` members.
#[repr(C)]
struct VlanIoctlArgs {
    cmd: c_int,
    device1: [c_char; 24],
    u: [u8; 24],
    vlan_qos: c_short,
}

/// Adds an IPv4 route through `interface`. A route that already exists is
/// not an error, so bring-up can be retried.
pub fn add_route(
    interface: &str,
    destination: Ipv4Addr,
    netmask: Ipv4Addr,
    gateway: Option<Ipv4Addr>,
) -> io::Result<()> {
    let fd = control_socket()?;
    let dev = CString::new(interface).map_err(|_| io::ErrorKind::InvalidInput)?;
    let mut flags = RTF_UP;
    if gateway.is_some() {
        flags |= RTF_GATEWAY;
    }
    if netmask == Ipv4Addr::BROADCAST {
        flags |= RTF_HOST;
    }
    let mut entry = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr_in(destination),
        rt_gateway: sockaddr_in(gateway.unwrap_or(Ipv4Addr::UNSPECIFIED)),
        rt_genmask: sockaddr_in(netmask),
        rt_flags: flags,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: ptr::null_mut(),
        rt_metric: 0,
        // The kernel only reads the name (copy_from_user); `dev` outlives the call.
        rt_dev: dev.as_ptr().cast_mut(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    // SAFETY: `entry` is a fully initialised `struct rtentry` and every
    // pointer in it (rt_dev) is valid for the duration of the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), SIOCADDRT, ptr::from_mut(&mut entry)) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EEXIST) {
        Ok(())
    } else {
        Err(err)
    }
}

/// `struct rtentry` from <linux/route.h>, as the kernel defines it. glibc's
/// libc crate bindings lack it, and musl's spells `rt_pad4` differently.
#[repr(C)]
struct RtEntry {
    rt_pad1: c_ulong,
    rt_dst: sockaddr,
    rt_gateway: sockaddr,
    rt_genmask: sockaddr,
    rt_flags: c_ushort,
    rt_pad2: c_short,
    rt_pad3: c_ulong,
    rt_pad4: *mut c_void,
    rt_metric: c_short,
    rt_dev: *mut c_char,
    rt_mtu: c_ulong,
    rt_window: c_ulong,
    rt_irtt: c_ushort,
}

/// The socket the SIOC* interface ioctls are issued on.
fn control_socket() -> io::Result<OwnedFd> {
    Ok(rustix::net::socket_with(
        AddressFamily::INET,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

fn ioctl(fd: &OwnedFd, request: libc::Ioctl, req: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: every request passed here takes a `struct ifreq`, and `req` is
    // a valid, initialised one that lives across the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request, ptr::from_mut(req)) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn ifreq(interface: &str) -> io::Result<libc::ifreq> {
    let bytes = interface.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid interface name {interface:?}"),
        ));
    }
    // SAFETY: ifreq is plain data (integers, arrays, a raw pointer in a
    // union); all zeros is a valid value and an empty request.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = c_char::from_ne_bytes([*src]);
    }
    Ok(req)
}

/// A `sockaddr_in` with port 0, in the generic `sockaddr` the ioctls take.
fn sockaddr_in(address: Ipv4Addr) -> sockaddr {
    let mut sa_data: [c_char; 14] = [0; 14];
    // sa_data of sockaddr_in: 2 bytes of port, then the address.
    for (dst, src) in sa_data[2..6].iter_mut().zip(address.octets()) {
        *dst = c_char::from_ne_bytes([src]);
    }
    sockaddr {
        sa_family: AF_INET,
        sa_data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_match_libc() {
        assert_eq!(i32::from(AF_INET), libc::AF_INET);
        assert_eq!(i32::from(AF_PACKET), libc::AF_PACKET);
        assert_eq!(i32::from(ETH_P_IP), libc::ETH_P_IP);
        assert_eq!(i32::from(IFF_UP), libc::IFF_UP);
        assert_eq!(RTF_UP, libc::RTF_UP);
        assert_eq!(RTF_GATEWAY, libc::RTF_GATEWAY);
        assert_eq!(RTF_HOST, libc::RTF_HOST);
        for (ours, theirs) in [
            (SIOCGIFFLAGS, libc::SIOCGIFFLAGS),
            (SIOCSIFFLAGS, libc::SIOCSIFFLAGS),
            (SIOCSIFADDR, libc::SIOCSIFADDR),
            (SIOCSIFNETMASK, libc::SIOCSIFNETMASK),
            (SIOCADDRT, libc::SIOCADDRT),
            (SIOCSIFMTU, libc::SIOCSIFMTU),
        ] {
            assert_eq!(i128::from(ours), i128::from(theirs));
        }
    }

    #[test]
    fn rtentry_has_the_kernel_layout() {
        // x86_64 and aarch64: 8 + 3*16 + 2 + 2 + 4(pad) + 8 + 8 + 2 + 6(pad) + 8 + 8 + 8 + 2 + 6(pad).
        #[cfg(target_pointer_width = "64")]
        assert_eq!(size_of::<RtEntry>(), 120);
    }

    #[test]
    fn vlan_ioctl_args_has_the_kernel_layout() {
        // int cmd; char device1[24]; union (24 bytes, int-aligned) u; short vlan_qos; + 2 pad.
        assert_eq!(size_of::<VlanIoctlArgs>(), 56);
        assert_eq!(std::mem::offset_of!(VlanIoctlArgs, u), 28);
        assert_eq!(std::mem::offset_of!(VlanIoctlArgs, vlan_qos), 52);
    }

    #[test]
    fn in6_ifreq_has_the_kernel_layout() {
        // struct in6_addr (16) + __u32 prefixlen + int ifindex.
        assert_eq!(size_of::<In6Ifreq>(), 24);
        assert_eq!(std::mem::offset_of!(In6Ifreq, ifr6_ifindex), 20);
    }

    #[test]
    fn sockaddr_in_layout() {
        let sa = sockaddr_in(Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(sa.sa_family, AF_INET);
        let bytes: Vec<u8> = sa.sa_data.iter().map(|c| c.to_ne_bytes()[0]).collect();
        assert_eq!(bytes[..6], [0, 0, 10, 0, 2, 15]);
        assert!(bytes[6..].iter().all(|b| *b == 0));
    }

    #[test]
    fn interface_names_are_checked() {
        assert!(ifreq("eth0").is_ok());
        assert!(ifreq("").is_err());
        assert!(ifreq("a-name-far-too-long").is_err());
        assert!(ifreq("et\0h").is_err());
    }
}
