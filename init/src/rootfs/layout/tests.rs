use std::process::Command;

use super::*;
use crate::disk::partitions::{apply_writes_to_file, read_partition_table};

const GIB: u64 = 1 << 30;

fn facts(name: &str, size_bytes: u64, logical: u32, physical: u32) -> DiskFacts {
    DiskFacts {
        name: name.to_owned(),
        size_bytes,
        logical_block_size: logical,
        physical_block_size: physical,
    }
}

fn sda(size_bytes: u64) -> DiskFacts {
    facts("/dev/sda", size_bytes, 512, 512)
}

/// (number, first LBA, last LBA) of each partition of the one disk.
fn lbas(plan: &Plan) -> Vec<(u32, u64, u64)> {
    plan.disks[0]
        .partitions
        .iter()
        .map(|p| (p.number, p.first_lba, p.last_lba))
        .collect()
}

fn err(result: Result<impl fmt::Debug>) -> String {
    format!("{:#}", result.unwrap_err())
}

fn json_err(text: &str) -> String {
    err(Layout::from_json(text))
}

/// `partitions` as one disk's JSON layout.
fn one_disk(partitions: &str) -> String {
    format!(r#"{{"disks":[{{"partitions":[{partitions}]}}]}}"#)
}

const ROOT: &str = r#"{"size":"rest","type":"linux","mount":"/"}"#;

// Default layout on 20 GiB of 512-byte sectors: 41943040 LBAs; GPT at
// 0..=33, first usable 34, backup array at 41943007..=41943038, header at
// 41943039, last usable 41943006. Aligned area: LBA 2048 (1 MiB) up to
// 41940992 (the last 1 MiB boundary at or before 41943007). ESP 512 MiB =
// 1048576 LBAs, BIOS boot 1 MiB = 2048, root the remaining 19965 MiB.
#[test]
fn default_layout_on_512_byte_sectors() {
    let plan = plan(&preset("default").unwrap(), &[sda(20 * GIB)], 1).unwrap();
    let disk = &plan.disks[0];
    assert_eq!(
        (disk.first_usable_lba, disk.last_usable_lba),
        (34, 41943006)
    );
    assert_eq!(
        lbas(&plan),
        [
            (1, 2048, 1050623),
            (2, 1050624, 1052671),
            (3, 1052672, 41940991)
        ]
    );
    let p = &disk.partitions;
    assert_eq!(p[2].size_bytes, 19965 * MIB);
    assert_eq!(
        (p[0].kind, p[0].filesystem, p[0].mount.as_deref()),
        (PartType::Esp, Filesystem::Vfat, Some("/boot/efi"))
    );
    assert_eq!(
        p[1].kind.guid().to_string(),
        "21686148-6449-6e6f-744e-656564454649"
    );
    assert_eq!(
        (p[1].filesystem, p[1].fs_id),
        (Filesystem::None, FsId::None)
    );
    assert_eq!(
        (p[2].filesystem, p[2].mount.as_deref()),
        (Filesystem::Ext4, Some("/"))
    );
    assert_eq!(
        [p[0].gpt_name.as_str(), &p[1].gpt_name, &p[2].gpt_name],
        ["/boot/efi", "bios-boot", "/"]
    );
}

// 20 GiB of 4096-byte sectors: 5242880 LBAs; the 16 KiB array is 4 blocks,
// so first usable 6, last usable 5242880 - 6 = 5242874. 1 MiB is 256 LBAs:
// area 256..5242624.
#[test]
fn default_layout_on_4kn() {
    let disk = facts("/dev/nvme0n1", 20 * GIB, 4096, 4096);
    let plan = plan(&preset("default").unwrap(), &[disk], 1).unwrap();
    let d = &plan.disks[0];
    assert_eq!((d.first_usable_lba, d.last_usable_lba), (6, 5242874));
    assert_eq!(
        lbas(&plan),
        [(1, 256, 131327), (2, 131328, 131583), (3, 131584, 5242623)]
    );
    assert_eq!(d.partitions[2].size_bytes, 19965 * MIB);
    assert_eq!(d.partition_device(3), "/dev/nvme0n1p3");
}

// A size that is no whole number of MiB: 8 GiB + 12345 bytes is 16777240
// 512-byte LBAs (the last 57 bytes are no block); last usable 16777206; the
// last 1 MiB boundary at or before 16777207 is 16777216 - 2048 = 16775168.
#[test]
fn an_odd_disk_size_ends_the_rest_on_a_mib_boundary() {
    let plan = plan(&preset("default").unwrap(), &[sda(8 * GIB + 12345)], 1).unwrap();
    assert_eq!(plan.disks[0].last_usable_lba, 16777206);
    assert_eq!(lbas(&plan)[2], (3, 1052672, 16775167));
    // Exactly 8 GiB: the backup GPT takes the last MiB's tail, so the rest
    // stops one MiB short of the end too.
    let plan = super::plan(&preset("default").unwrap(), &[sda(8 * GIB)], 1).unwrap();
    assert_eq!(lbas(&plan)[2], (3, 1052672, 16775167));
}

#[test]
fn a_physical_block_larger_than_1_mib_sets_the_alignment() {
    // 2 MiB physical blocks (a RAID stripe, say): starts on 4096-LBA
    // boundaries, fixed sizes rounded up to 2 MiB.
    let plan = plan(
        &preset("default").unwrap(),
        &[facts("/dev/md0", 20 * GIB, 512, 2 << 20)],
        1,
    )
    .unwrap();
    assert_eq!(
        lbas(&plan),
        [
            (1, 4096, 1052671),
            (2, 1052672, 1056767),
            (3, 1056768, 41938943)
        ]
    );
    // 4096-byte physical under 512-byte logical: 1 MiB already aligns it.
    let plan = super::plan(
        &preset("default").unwrap(),
        &[facts("/dev/sda", 20 * GIB, 512, 4096)],
        1,
    )
    .unwrap();
    assert_eq!(lbas(&plan)[0], (1, 2048, 1050623));
}

#[test]
fn fixed_sizes_round_up_to_whole_mib() {
    let layout = Layout::from_json(&one_disk(&format!(
        r#"{{"size":"1500K","type":"bios-boot"}},{ROOT}"#
    )))
    .unwrap();
    let plan = plan(&layout, &[sda(GIB)], 1).unwrap();
    assert_eq!(lbas(&plan)[0], (1, 2048, 6143));
    assert_eq!(plan.disks[0].partitions[0].size_bytes, 2 * MIB);
}

// 1 GiB of 512-byte sectors: 2097152 LBAs, last usable 2097118, aligned
// area 2048..2095104 = 1022 MiB. 25% is 255.5 MiB, down to 255; 10% is
// 102.2, down to 102; the rest, placed between them, 1022 - 357 = 665 MiB.
#[test]
fn percentages_and_a_rest_in_the_middle() {
    let layout = Layout::from_json(&one_disk(
        r#"{"size":"25%","type":"linux","mount":"/"},
           {"size":"rest","type":"linux","mount":"/var"},
           {"size":"10%","type":"swap"}"#,
    ))
    .unwrap();
    let plan = plan(&layout, &[sda(GIB)], 1).unwrap();
    assert_eq!(
        lbas(&plan),
        [
            (1, 2048, 524287),
            (2, 524288, 1886207),
            (3, 1886208, 2095103)
        ]
    );
    let sizes: Vec<u64> = plan.disks[0]
        .partitions
        .iter()
        .map(|p| p.size_bytes / MIB)
        .collect();
    assert_eq!(sizes, [255, 665, 102]);
}

#[test]
fn four_quarters_fit() {
    let layout = Layout::from_json(&one_disk(
        r#"{"size":"25%","type":"linux","mount":"/"},
           {"size":"25%","type":"linux","mount":"/a"},
           {"size":"25%","type":"linux","mount":"/b"},
           {"size":"25%","type":"linux","mount":"/c"}"#,
    ))
    .unwrap();
    // 20 GiB: 20478 MiB usable, a quarter 5119.5, down to 5119.
    let plan = plan(&layout, &[sda(20 * GIB)], 1).unwrap();
    assert_eq!(
        lbas(&plan)[3],
        (4, 2048 + 3 * 5119 * 2048, 2048 + 4 * 5119 * 2048 - 1)
    );
}

// Disk 2 is 10 GiB: 20971520 LBAs, last usable 20971486, area
// 2048..20969472.
#[test]
fn two_disks() {
    let layout = Layout::from_json(
        r#"{"disks":[
            {"partitions":[{"size":"512M","type":"esp","mount":"/boot/efi"},
                           {"size":"rest","type":"linux","filesystem":"xfs","mount":"/"}]},
            {"disk":"/dev/sdb","partitions":[
                {"size":"100%","type":"linux-home","filesystem":"xfs","mount":"/home"}]}]}"#,
    )
    .unwrap();
    let plan = plan(
        &layout,
        &[sda(20 * GIB), facts("/dev/sdb", 10 * GIB, 512, 512)],
        7,
    )
    .unwrap();
    assert_eq!(plan.disks.len(), 2);
    let sdb = &plan.disks[1];
    assert_eq!(sdb.name, "/dev/sdb");
    let p = &sdb.partitions[0];
    assert_eq!((p.number, p.first_lba, p.last_lba), (1, 2048, 20969471));
    assert_eq!(p.kind.to_string(), "linux-home");
    assert_ne!(plan.disks[0].disk_guid, sdb.disk_guid);
    assert_eq!(
        err(super::plan(&layout, &[sda(20 * GIB)], 7)),
        "layout names 2 disk(s) but 1 were selected"
    );
}

#[test]
fn plan_errors_name_the_disk_and_partition() {
    let json = |parts: &str| Layout::from_json(&one_disk(parts)).unwrap();
    let cases: Vec<(Layout, DiskFacts, &str)> = vec![
        (
            json(r#"{"size":"512M","type":"esp"},{"size":"9G","type":"linux","mount":"/"}"#),
            sda(8 * GIB),
            "layout does not fit /dev/sda (8.0 GiB): partitions need 9.5 GiB of 8.0 GiB usable",
        ),
        (
            preset("default").unwrap(),
            sda(512 * MIB),
            "layout does not fit /dev/sda (512.0 MiB): partitions need 514.0 MiB \
             (with 1.0 MiB for \"rest\") of 510.0 MiB usable",
        ),
        (
            json(&format!(r#"{{"size":"16M","type":"esp"}},{ROOT}"#)),
            sda(GIB),
            "layout.disks[0].partitions[0].size: 16.0 MiB is too small for vfat \
             (at least 32.0 MiB on /dev/sda)",
        ),
        (
            json(&format!(r#"{{"size":"256M","type":"esp"}},{ROOT}"#)),
            facts("/dev/sda", GIB, 4096, 4096),
            "layout.disks[0].partitions[0].size: 256.0 MiB is too small for vfat \
             (at least 260.0 MiB on /dev/sda)",
        ),
        (
            json(r#"{"size":"200M","type":"linux","filesystem":"xfs","mount":"/"}"#),
            sda(GIB),
            "layout.disks[0].partitions[0].size: 200.0 MiB is too small for xfs \
             (at least 300.0 MiB on /dev/sda)",
        ),
        (
            json(r#"{"size":"8M","type":"linux","mount":"/"}"#),
            sda(GIB),
            "layout.disks[0].partitions[0].size: 8.0 MiB is too small for ext4 \
             (at least 16.0 MiB on /dev/sda)",
        ),
        // The rest is checked once resolved: 64 MiB disk, 62 usable, 50
        // for the ESP, 12 for an ext4 root.
        (
            json(&format!(r#"{{"size":"50M","type":"esp"}},{ROOT}"#)),
            sda(64 * MIB),
            "layout.disks[0].partitions[1].size: 12.0 MiB is too small for ext4 \
             (at least 16.0 MiB on /dev/sda)",
        ),
        (
            json(r#"{"size":"1%","type":"linux","mount":"/"}"#),
            sda(64 * MIB),
            "layout.disks[0].partitions[0].size: 1% of /dev/sda is less than 1.0 MiB",
        ),
        (
            preset("default").unwrap(),
            sda(16 * 1024),
            "/dev/sda (16.0 KiB) is too small for a GPT",
        ),
        (
            preset("default").unwrap(),
            facts("/dev/sda", GIB, 1024, 1024),
            "/dev/sda: unsupported logical block size 1024 (512 or 4096)",
        ),
        (
            preset("default").unwrap(),
            facts("/dev/sda", GIB, 4096, 512),
            "/dev/sda: physical block size 512 is not a power of two at least the logical 4096",
        ),
    ];
    for (layout, disk, want) in cases {
        assert_eq!(err(plan(&layout, &[disk], 1)), want);
    }
}

#[test]
fn layout_errors_name_the_field() {
    let cases = [
        (
            one_disk(r#"{"size":"1G","type":"linux","mount":"/srv"}"#),
            "layout: no partition is mounted at \"/\" (exactly one must be)",
        ),
        (
            one_disk(&format!(
                r#"{{"size":"1G","type":"linux","mount":"/"}},{ROOT}"#
            )),
            "layout.disks[0].partitions[1].mount: \"/\" is mounted twice (each mount point once)",
        ),
        (
            one_disk(&format!(
                r#"{ROOT},{{"size":"1G","type":"linux","mount":"/srv"}},{{"size":"1G","type":"linux","mount":"/srv"}}"#
            )),
            "layout.disks[0].partitions[2].mount: \"/srv\" is mounted twice (each mount point once)",
        ),
        (
            one_disk(&format!(
                r#"{{"size":"1M","type":"bios-boot","filesystem":"ext4"}},{ROOT}"#
            )),
            "layout.disks[0].partitions[0].filesystem: type bios-boot takes filesystem none, not ext4",
        ),
        (
            one_disk(&format!(
                r#"{{"size":"1G","type":"esp","filesystem":"ext4"}},{ROOT}"#
            )),
            "layout.disks[0].partitions[0].filesystem: type esp takes filesystem vfat, not ext4",
        ),
        (
            one_disk(&format!(
                r#"{{"size":"1G","type":"lvm","filesystem":"xfs"}},{ROOT}"#
            )),
            "layout.disks[0].partitions[0].filesystem: type lvm takes filesystem none, not xfs",
        ),
        (
            one_disk(&format!(
                r#"{{"size":"1G","type":"linux","filesystem":"swap"}},{ROOT}"#
            )),
            "layout.disks[0].partitions[0].filesystem: swap belongs on a partition of type swap, not linux",
        ),
        (
            one_disk(&format!(
                r#"{{"size":"1G","type":"swap","mount":"/swap"}},{ROOT}"#
            )),
            "layout.disks[0].partitions[0].mount: filesystem swap is not mounted (leave out \"mount\")",
        ),
        (
            one_disk(&format!(
                r#"{{"size":"rest","type":"linux","mount":"/srv"}},{ROOT}"#
            )),
            "layout.disks[0].partitions: 2 partitions sized \"rest\" (at most one per disk)",
        ),
        (
            one_disk(r#"{"size":"rest","type":"linux","mount":"/srv/"}"#),
            "layout.disks[0].partitions[0].mount: \"/srv/\" is not an absolute path such as /home \
             (no //, ., .., spaces or trailing /)",
        ),
        (
            one_disk(r#"{"size":"rest","type":"linux","mount":"srv"}"#),
            "layout.disks[0].partitions[0].mount: \"srv\" is not an absolute path such as /home \
             (no //, ., .., spaces or trailing /)",
        ),
        (
            one_disk(r#"{"size":"rest","type":"linux","mount":"/a/../b"}"#),
            "layout.disks[0].partitions[0].mount: \"/a/../b\" is not an absolute path such as /home \
             (no //, ., .., spaces or trailing /)",
        ),
        (
            one_disk(r#"{"size":"rest","type":"linux","mount":"/my data"}"#),
            "layout.disks[0].partitions[0].mount: \"/my data\" is not an absolute path such as /home \
             (no //, ., .., spaces or trailing /)",
        ),
        (
            one_disk(r#"{"size":"rest","type":"esp","mount":"/"}"#),
            "layout.disks[0].partitions[0].filesystem: the root filesystem must be ext4 or xfs, not vfat",
        ),
        (
            one_disk(
                r#"{"size":"rest","type":"linux","filesystem":"xfs","label":"thirteen-char","mount":"/"}"#,
            ),
            "layout.disks[0].partitions[0].label: \"thirteen-char\" is no label for xfs (at most 12 bytes, no spaces)",
        ),
        (
            one_disk(r#"{"size":"rest","type":"linux","mount":"/","options":"defaults noatime"}"#),
            "layout.disks[0].partitions[0].options: \"defaults noatime\" is not a mount option list \
             such as defaults,noatime",
        ),
        (
            r#"{"disks":[{"partitions":[]}]}"#.to_owned(),
            "layout.disks[0].partitions: no partitions",
        ),
        (r#"{"disks":[]}"#.to_owned(), "layout.disks: no disks"),
        (
            format!(
                r#"{{"disks":[{{"partitions":[{ROOT}]}},{{"partitions":[{{"size":"1G","type":"linux"}}]}}]}}"#
            ),
            "layout.disks[1].disk: missing (only the first disk may leave it out, meaning the deploy's target disk)",
        ),
        (
            format!(
                r#"{{"disks":[{{"disk":"/dev/sda","partitions":[{ROOT}]}},{{"disk":"/dev/sda","partitions":[{{"size":"1G","type":"linux"}}]}}]}}"#
            ),
            "layout.disks[1].disk: \"/dev/sda\" is named twice",
        ),
    ];
    for (json, want) in cases {
        assert_eq!(json_err(&json), want, "{json}");
    }
    let too_many: Vec<String> = (0..129)
        .map(|i| {
            format!(
                r#"{{"size":"1M","type":"linux","filesystem":"none","mount":null,"label":"p{i}"}}"#
            )
        })
        .collect();
    assert_eq!(
        json_err(&one_disk(&too_many.join(","))),
        "layout.disks[0].partitions: 129 partitions, but a GPT holds 128"
    );
}

#[test]
fn bad_json_names_the_field_and_the_fix() {
    let cases = [
        (
            one_disk(r#"{"size":"12X","type":"linux","mount":"/"}"#),
            "layout.disks[0].partitions[0].size: \"12X\" is not a size (use 512M, 20G, 25% or rest)",
        ),
        (
            one_disk(r#"{"size":"101%","type":"linux","mount":"/"}"#),
            "layout.disks[0].partitions[0].size: \"101%\" is not a size (use 512M, 20G, 25% or rest)",
        ),
        (
            one_disk(r#"{"size":512,"type":"linux","mount":"/"}"#),
            "layout.disks[0].partitions[0].size: expected a string, found a number",
        ),
        (
            one_disk(r#"{"type":"linux","mount":"/"}"#),
            "layout.disks[0].partitions[0].size: missing (use 512M, 20G, 25% or rest)",
        ),
        (
            one_disk(r#"{"size":"rest","type":"linux","mount":"/","sise":"1G"}"#),
            "layout.disks[0].partitions[0].sise: unknown field (use size, type, filesystem, label, mount, options)",
        ),
        (
            r#"{"disks":[{"partitions":[],"name":"x"}]}"#.to_owned(),
            "layout.disks[0].name: unknown field (use disk, partitions)",
        ),
        (
            r#"{"disks":[],"scheme":"mbr"}"#.to_owned(),
            "layout.scheme: unknown field (use disks)",
        ),
        (
            one_disk(r#"{"size":"rest","type":"ntfs","mount":"/"}"#),
            "layout.disks[0].partitions[0].type: \"ntfs\" is not a partition type (use esp, bios-boot, \
             linux, swap, linux-home, lvm, raid or a GPT type GUID)",
        ),
        (
            one_disk(r#"{"size":"rest","type":"linux","filesystem":"btrfs","mount":"/"}"#),
            "layout.disks[0].partitions[0].filesystem: \"btrfs\" is not a filesystem (use ext4, xfs, vfat, swap, none)",
        ),
        (
            one_disk(r#"["rest","linux"]"#),
            "layout.disks[0].partitions[0]: expected an object, found an array",
        ),
        (
            r#"{"disks":{"partitions":[]}}"#.to_owned(),
            "layout.disks: expected an array of disks, each with \"partitions\"",
        ),
        (
            r#""raid10""#.to_owned(),
            "layout: no layout preset \"raid10\" (use default, with-swap, xfs-root)",
        ),
        (
            r#"{"disks":["#.to_owned(),
            "layout: not valid JSON: EOF while parsing a list at line 1 column 10",
        ),
    ];
    for (json, want) in cases {
        assert_eq!(json_err(&json), want, "{json}");
    }
}

#[test]
fn sizes_parse_and_print() {
    for (text, size) in [
        ("512M", Size::Bytes(512 * MIB)),
        ("512MiB", Size::Bytes(512 * MIB)),
        ("20G", Size::Bytes(20 * GIB)),
        ("2T", Size::Bytes(2 << 40)),
        ("64K", Size::Bytes(64 << 10)),
        ("4096B", Size::Bytes(4096)),
        ("25%", Size::Percent(25)),
        ("100%", Size::Percent(100)),
        ("rest", Size::Rest),
    ] {
        assert_eq!(Size::parse(text), Some(size), "{text}");
    }
    assert_eq!(Size::Bytes(512 * MIB).to_string(), "512M");
    assert_eq!(Size::Bytes(1536 * MIB).to_string(), "1536M");
    assert_eq!(Size::Bytes(2 * GIB).to_string(), "2G");
    assert_eq!(Size::Bytes(1000).to_string(), "1000B");
    for size in [
        Size::Bytes(1000),
        Size::Bytes(3 << 40),
        Size::Percent(7),
        Size::Rest,
    ] {
        assert_eq!(Size::parse(&size.to_string()), Some(size));
    }
    for bad in [
        "",
        "12X",
        "512",
        "M",
        "-1G",
        "+1G",
        "0M",
        "0%",
        "101%",
        "%",
        "1.5G",
        "1g",
        " 1G",
        "Rest",
        "99999999999T",
    ] {
        assert_eq!(Size::parse(bad), None, "{bad:?}");
    }
}

/// The JSON example in the module docs, as a user would paste it.
fn doc_example() -> String {
    let source = include_str!("../layout.rs");
    let lines: Vec<&str> = source
        .lines()
        .map_while(|l| l.strip_prefix("//!"))
        .skip_while(|l| l.trim() != "```json")
        .skip(1)
        .take_while(|l| l.trim() != "```")
        .collect();
    format!("{{{}}}", lines.join("\n"))
}

#[test]
fn the_documented_example_parses_and_round_trips() {
    let spec: Value = serde_json::from_str(&doc_example()).unwrap();
    let layout = Layout::from_json_value(&spec["layout"]).unwrap();
    assert_eq!(layout.disks.len(), 2);
    assert_eq!(layout.disks[1].disk.as_deref(), Some("/dev/sdb"));
    let swap = &layout.disks[0].partitions[2];
    assert_eq!(
        (swap.size, swap.kind, swap.filesystem),
        (Size::Bytes(4 * GIB), PartType::Swap, Filesystem::Swap)
    );
    assert_eq!(layout.disks[0].partitions[1].filesystem, Filesystem::None);
    let again = Layout::from_json_value(&layout.to_json()).unwrap();
    assert_eq!(again, layout);
    // And text to text.
    let text = layout.to_json().to_string();
    assert_eq!(
        Layout::from_json(&text).unwrap().to_json().to_string(),
        text
    );
}

#[test]
fn presets_round_trip_through_json() {
    for name in PRESETS {
        let layout = preset(name).unwrap();
        assert_eq!(
            Layout::from_json_value(&layout.to_json()).unwrap(),
            layout,
            "{name}"
        );
        assert_eq!(Layout::from_json(&format!("{name:?}")).unwrap(), layout);
    }
}

#[test]
fn a_raw_type_guid_round_trips() {
    let layout = Layout::from_json(&one_disk(
        r#"{"size":"rest","type":"4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709","filesystem":"ext4","mount":"/"}"#,
    ))
    .unwrap();
    let kind = layout.disks[0].partitions[0].kind;
    assert_eq!(kind, PartType::Other(Guid::ROOT_X86_64));
    assert_eq!(
        layout.to_json()["disks"][0]["partitions"][0]["type"],
        "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"
    );
}

#[test]
fn presets_by_name() {
    let fs = |name: &str| -> Vec<(PartType, Filesystem, Size)> {
        preset(name).unwrap().disks[0]
            .partitions
            .iter()
            .map(|p| (p.kind, p.filesystem, p.size))
            .collect()
    };
    let esp = (PartType::Esp, Filesystem::Vfat, Size::Bytes(512 * MIB));
    let bios = (PartType::BiosBoot, Filesystem::None, Size::Bytes(MIB));
    assert_eq!(
        fs("default"),
        [esp, bios, (PartType::Linux, Filesystem::Ext4, Size::Rest)]
    );
    assert_eq!(
        fs("with-swap"),
        [
            esp,
            bios,
            (PartType::Swap, Filesystem::Swap, Size::Bytes(4 * GIB)),
            (PartType::Linux, Filesystem::Ext4, Size::Rest)
        ]
    );
    assert_eq!(
        fs("xfs-root"),
        [esp, bios, (PartType::Linux, Filesystem::Xfs, Size::Rest)]
    );
    for name in PRESETS {
        preset(name).unwrap().check().unwrap();
    }
    assert_eq!(
        err(preset("Default")),
        "no layout preset \"Default\" (use default, with-swap, xfs-root)"
    );
}

#[test]
fn the_same_seed_gives_the_same_ids_and_another_seed_others() {
    let layout = preset("with-swap").unwrap();
    let a = plan(&layout, &[sda(20 * GIB)], 0x5254_0012_3456).unwrap();
    let b = plan(&layout, &[sda(20 * GIB)], 0x5254_0012_3456).unwrap();
    let c = plan(&layout, &[sda(20 * GIB)], 0x5254_0012_3457).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.to_string(), b.to_string());
    assert_ne!(a.disks[0].disk_guid, c.disks[0].disk_guid);
    let mut seen = BTreeSet::new();
    for p in &a.disks[0].partitions {
        assert!(seen.insert(p.part_guid.to_string()));
        if let FsId::Uuid(u) = p.fs_id {
            assert!(seen.insert(u.to_string()));
            // RFC 9562 version 4, variant 10.
            assert_eq!(u.0[6] >> 4, 4);
            assert_eq!(u.0[8] >> 6, 2);
        }
        let text = p.part_guid.to_string();
        assert_eq!(&text[14..15], "4", "{text}");
        assert!(matches!(&text[19..20], "8" | "9" | "a" | "b"), "{text}");
    }
    assert!(matches!(a.disks[0].partitions[0].fs_id, FsId::VolumeId(_)));
}

#[test]
fn the_plan_prints_one_line_per_partition() {
    let layout = Layout::from_json(
        r#"{"disks":[
            {"partitions":[{"size":"512M","type":"esp","mount":"/boot/efi","label":"EFI"},
                           {"size":"1M","type":"bios-boot"},
                           {"size":"rest","type":"linux","mount":"/"}]},
            {"disk":"/dev/nvme0n1","partitions":[
                {"size":"100%","type":"linux-home","filesystem":"xfs","mount":"/home"}]}]}"#,
    )
    .unwrap();
    let plan = plan(
        &layout,
        &[sda(20 * GIB), facts("/dev/nvme0n1", 10 * GIB, 4096, 4096)],
        42,
    )
    .unwrap();
    assert_eq!(
        plan.to_string(),
        concat!(
            "/dev/sda: 20.0 GiB, 512-byte sectors, new GPT bdd73226-2feb-4e95-a8ef-e333b266f103 (usable LBAs 34-41943006)\n",
            "  /dev/sda1 LBA 2048-1050623 (512.0 MiB at 1.0 MiB) esp vfat label EFI on /boot/efi\n",
            "  /dev/sda2 LBA 1050624-1052671 (1.0 MiB at 513.0 MiB) bios-boot none\n",
            "  /dev/sda3 LBA 1052672-41940991 (19.5 GiB at 514.0 MiB) linux ext4 on /\n",
            "/dev/nvme0n1: 10.0 GiB, 4096-byte sectors, new GPT 7e348a0e-4516-40be-836d-ed897f3e46e6 (usable LBAs 6-2621434)\n",
            "  /dev/nvme0n1p1 LBA 256-2621183 (10.0 GiB at 1.0 MiB) linux-home xfs on /home\n",
        )
    );
}

#[test]
fn fstab_by_uuid_parents_first_then_swap() {
    let layout = Layout::from_json(
        r#"{"disks":[
            {"partitions":[{"size":"512M","type":"esp","mount":"/boot/efi","options":"umask=0077"},
                           {"size":"1G","type":"linux","mount":"/var/log"},
                           {"size":"1G","type":"swap","options":"sw"},
                           {"size":"1G","type":"linux","filesystem":"none"},
                           {"size":"rest","type":"linux","mount":"/","options":"errors=remount-ro"}]},
            {"disk":"/dev/sdb","partitions":[
                {"size":"50%","type":"linux","filesystem":"xfs","mount":"/var"},
                {"size":"rest","type":"linux-home","mount":"/home"}]}]}"#,
    )
    .unwrap();
    let plan = plan(
        &layout,
        &[sda(20 * GIB), facts("/dev/sdb", 10 * GIB, 512, 512)],
        42,
    )
    .unwrap();
    assert_eq!(
        fstab(&plan),
        concat!(
            "# <file system> <mount point> <type> <options> <dump> <pass>\n",
            "UUID=7ed90003-f67f-4e1d-97ea-dff448a86a07 / ext4 errors=remount-ro 0 1\n",
            "UUID=c9167e19-8fb9-491f-b122-2631cdc86d07 /home ext4 defaults 0 2\n",
            "UUID=9eac75d4-5474-4891-92fc-33f229b7b950 /var xfs defaults 0 2\n",
            "UUID=09BC-585A /boot/efi vfat umask=0077 0 1\n",
            "UUID=ccf635ee-9e9e-4fa4-9705-b8770b3d7dd5 /var/log ext4 defaults 0 2\n",
            "UUID=7e348a0e-4516-40be-836d-ed897f3e46e6 none swap sw 0 0\n",
        )
    );
}

/// What `program` prints. sfdisk and sgdisk come with `scripts/setup`
/// (fdisk, gdisk): a machine without them fails here rather than skip.
fn tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} (scripts/setup installs it): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The fresh GPT as sfdisk and sgdisk read it back from an image file:
/// starts, sizes, types, GUIDs, names, and sgdisk's own checks.
#[test]
fn gpt_writes_read_back_with_sfdisk_and_sgdisk() {
    let plan = plan(&preset("with-swap").unwrap(), &[sda(8 * GIB)], 9).unwrap();
    let disk = &plan.disks[0];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(disk.size_bytes).unwrap();
    apply_writes_to_file(&file, "disk.img", &gpt_writes(disk).unwrap()).unwrap();
    let path = path.to_str().unwrap();

    let dump = tool("sfdisk", &["--dump", path]);
    // Header lines one by one and partition lines with their column
    // padding squeezed: util-linux versions differ in which header lines
    // they print (sector-size came in 2.35) and in padding.
    let lines: Vec<String> = dump
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    for header in [
        "label: gpt".to_owned(),
        format!("label-id: {}", disk.disk_guid.to_string().to_uppercase()),
        "first-lba: 34".to_owned(),
        "last-lba: 16777182".to_owned(),
    ] {
        assert!(lines.contains(&header), "{header:?} not in\n{dump}");
    }
    let partitions: Vec<&String> = lines.iter().filter(|l| l.starts_with(path)).collect();
    let want: Vec<String> = disk
        .partitions
        .iter()
        .map(|p| {
            format!(
                "{path}{} : start= {}, size= {}, type={}, uuid={}, name=\"{}\"",
                p.number,
                p.first_lba,
                p.last_lba - p.first_lba + 1,
                p.kind.guid().to_string().to_uppercase(),
                p.part_guid.to_string().to_uppercase(),
                p.gpt_name
            )
        })
        .collect();
    assert_eq!(partitions, want.iter().collect::<Vec<_>>(), "{dump}");

    let verify = tool("sgdisk", &["--verify", path]);
    assert!(verify.contains("No problems found"), "{verify}");
    let info = tool("sgdisk", &["--info=2", path]);
    assert!(
        info.contains(
            "Partition GUID code: 21686148-6449-6E6F-744E-656564454649 (BIOS boot partition)"
        ),
        "{info}"
    );
    assert!(info.contains("First sector: 1050624"), "{info}");
}

/// Read back with imprint's own reader, on both sector sizes (sfdisk
/// takes an image file's sectors to be 512 bytes, and may be missing).
#[test]
fn gpt_writes_read_back_with_imprints_reader() {
    for block_size in [512, 4096] {
        gpt_read_back(block_size);
    }
}

fn gpt_read_back(block_size: u32) {
    let plan = plan(
        &preset("with-swap").unwrap(),
        &[facts("/dev/sda", 6 * GIB, block_size, block_size)],
        3,
    )
    .unwrap();
    let disk = &plan.disks[0];
    let mut image = vec![0u8; usize::try_from(disk.size_bytes).unwrap()];
    for w in gpt_writes(disk).unwrap() {
        let at = usize::try_from(w.offset).unwrap();
        image[at..at + w.bytes.len()].copy_from_slice(&w.bytes);
    }
    let mut read_at = |at: u64, buf: &mut [u8]| -> std::io::Result<()> {
        let at = usize::try_from(at).unwrap();
        buf.copy_from_slice(&image[at..at + buf.len()]);
        Ok(())
    };
    let table = read_partition_table(&mut read_at, disk.size_bytes, Some(block_size)).unwrap();
    assert!(table.problems.is_empty(), "{:?}", table.problems);
    assert_eq!(table.block_size, block_size);
    let gpt = table.gpt.as_ref().unwrap();
    assert_eq!(gpt.header.disk_guid, disk.disk_guid);
    assert_eq!(
        (gpt.header.first_usable_lba, gpt.header.last_usable_lba),
        (disk.first_usable_lba, disk.last_usable_lba)
    );
    assert_eq!(
        gpt.backup_lba,
        Some(disk.size_bytes / u64::from(block_size) - 1)
    );
    let got: Vec<_> = table
        .partitions
        .iter()
        .map(|p| {
            (
                p.number,
                p.first_lba,
                p.last_lba,
                p.type_guid,
                p.part_uuid.clone(),
                p.name.clone(),
            )
        })
        .collect();
    let want: Vec<_> = disk
        .partitions
        .iter()
        .map(|p| {
            (
                p.number,
                p.first_lba,
                p.last_lba,
                Some(p.kind.guid()),
                Some(p.part_guid.to_string()),
                Some(p.gpt_name.clone()),
            )
        })
        .collect();
    assert_eq!(got, want);
}

#[test]
fn a_vfat_label_keeps_to_fat_rules() {
    let json = one_disk(&format!(
        r#"{{"size":"512M","type":"esp","label":"EFI/BOOT"}},{ROOT}"#
    ));
    assert_eq!(
        json_err(&json),
        "layout.disks[0].partitions[0].label: \"EFI/BOOT\" is no label for vfat (none of \"*+,./:;<=>?[\\]|)"
    );
    let json = one_disk(&format!(
        r#"{{"size":"512M","type":"esp","label":"TWELVE-CHARS"}},{ROOT}"#
    ));
    assert_eq!(
        json_err(&json),
        "layout.disks[0].partitions[0].label: \"TWELVE-CHARS\" is no label for vfat (at most 11 bytes, no spaces)"
    );
}

#[test]
fn a_long_mount_point_is_cut_to_a_gpt_name() {
    let mount = "/srv/a-rather-long-mount-point/for-data";
    let layout = Layout::from_json(&one_disk(&format!(
        r#"{ROOT},{{"size":"1G","type":"linux","mount":"{mount}"}}"#
    )))
    .unwrap();
    let layout = Layout {
        disks: vec![DiskLayout {
            disk: None,
            partitions: layout.disks[0].partitions.iter().rev().cloned().collect(),
        }],
    };
    let plan = plan(&layout, &[sda(4 * GIB)], 1).unwrap();
    assert_eq!(plan.disks[0].partitions[0].gpt_name, mount[..36]);
    assert_eq!(gpt_writes(&plan.disks[0]).unwrap().len(), 5);
}

#[test]
fn sizes_too_large_for_u64_are_errors_not_panics() {
    let mut layout = preset("default").unwrap();
    layout.disks[0].partitions[0].size = Size::Bytes(u64::MAX);
    assert_eq!(
        err(plan(&layout, &[sda(GIB)], 1)),
        "partition sizes overflow"
    );
    layout.disks[0].partitions[0].size = Size::Bytes(u64::MAX / 2);
    layout.disks[0].partitions[1].size = Size::Bytes(u64::MAX / 2);
    assert_eq!(
        err(plan(&layout, &[sda(GIB)], 1)),
        "partition sizes overflow"
    );
}

#[test]
fn rest_needs_one_alignment_unit() {
    let layout = preset("default").unwrap();
    // 2 MiB physical blocks: the rest needs 2 MiB, and fixed sizes round
    // up to 2 MiB (the BIOS boot partition's 1 MiB takes 2).
    assert_eq!(
        err(plan(
            &layout,
            &[facts("/dev/md0", 512 * MIB, 512, 2 << 20)],
            1
        )),
        "layout does not fit /dev/md0 (512.0 MiB): partitions need 516.0 MiB \
         (with 2.0 MiB for \"rest\") of 508.0 MiB usable"
    );
}

#[test]
fn a_seed_from_a_mac() {
    assert_eq!(
        seed_from_mac([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]),
        0x5254_0012_3456
    );
}

#[test]
fn gpt_writes_refuse_a_plan_that_does_not_fit() {
    let mut plan = plan(&preset("default").unwrap(), &[sda(GIB)], 1).unwrap();
    let disk = &mut plan.disks[0];
    disk.partitions[2].last_lba = disk.last_usable_lba + 1;
    assert_eq!(
        err(gpt_writes(disk)),
        "/dev/sda: partition 3 (LBA 1052672-2097119) does not fit the GPT"
    );
    disk.partitions[2].last_lba = disk.last_usable_lba;
    disk.partitions[2].number = 0;
    assert_eq!(
        err(gpt_writes(disk)),
        "/dev/sda: partition 0 (LBA 1052672-2097118) does not fit the GPT"
    );
    disk.size_bytes = 4096;
    assert_eq!(
        err(gpt_writes(disk)),
        "/dev/sda: usable LBAs 34-2097118 do not fit a GPT on 8 blocks"
    );
}
