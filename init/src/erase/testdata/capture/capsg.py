# gdb python: at every SG_IO (0x2285) entry print direction, CDB, timeout and a
# data-out block; at return pretend the device said "good": rax=0,
# driver_status=DRIVER_SENSE, and descriptor sense 72h with an ATA Status
# Return descriptor (09h) whose status is 50h (DRDY|DSC), the shape hdparm's
# sgio.c checks for. Data-in buffers are left as the tool zeroed them.
import gdb
gdb.execute("set pagination off")
gdb.execute("catch syscall ioctl")
gdb.execute("run")
entry = True
hdr = None
inf = gdb.selected_inferior()
def rd(a, n): return bytes(inf.read_memory(a, n))
def u(b): return int.from_bytes(b, "little")
while True:
    try:
        gdb.selected_frame()
    except gdb.error:
        break
    if entry:
        req = int(gdb.parse_and_eval("$rsi")) & 0xffffffff
        arg = int(gdb.parse_and_eval("$rdx"))
        if req == 0x2285:
            h = rd(arg, 88)
            d = {-1: "NONE", -2: "TO_DEV", -3: "FROM_DEV"}.get(int.from_bytes(h[4:8], "little", signed=True), "?")
            cl = h[8]; n = u(h[12:16]); dp = u(h[16:24]); cp = u(h[24:32])
            s = "SGIO dir=%s cdb=%s dxfer_len=%d timeout_ms=%d" % (d, rd(cp, cl).hex(), n, u(h[40:44]))
            if d == "TO_DEV" and n: s += " data=" + rd(dp, n).hex()
            print(s)
            if rd(cp, cl)[0] == 0x12:
                # A standard INQUIRY answer (disk, SPC-4, 36 bytes) so sg3_utils goes on.
                inq = bytes([0, 0, 6, 2, 31, 0, 0, 0]) + b"IMPRINT FAKEDISK        0001"
                inf.write_memory(dp, inq[:n])
            hdr = (arg, u(h[32:40]), h[9] if rd(cp, cl)[0] in (0x85, 0xa1) else 0, dp if (d == "FROM_DEV" and cl > 14 and rd(cp, cl)[14] == 0xEC) else 0)
        else:
            print("OTHER %08x" % req)
            hdr = None
    else:
        gdb.execute("set $rax = 0")
        if hdr:
            arg, sbp, mx, ident = hdr
            if ident:
                # IDENTIFY data claiming the sanitize feature set with all
                # three actions (word 59 bits 12-15) so hdparm goes on.
                w = [0] * 256
                w[59] = 0xF000
                inf.write_memory(ident, b"".join(x.to_bytes(2, "little") for x in w))
            sense = bytes([0x72, 0, 0, 0, 0, 0, 0, 14, 0x09, 0x0c, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x50])
            if mx:
                inf.write_memory(sbp, sense[:mx])
                inf.write_memory(arg + 64, bytes([2, 1, 0, min(mx, len(sense))]))  # CHECK CONDITION
                inf.write_memory(arg + 68, bytes([0, 0, 8, 0]))  # host 0, driver SENSE
            else:
                # Plain SCSI: GOOD status, no sense, nothing left over.
                inf.write_memory(arg + 64, bytes(12))
    entry = not entry
    try:
        gdb.execute("continue", to_string=True)
    except gdb.error:
        break
