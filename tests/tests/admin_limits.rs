//! The issuer's input bounds, end to end: registration entries and other
//! admin API arguments through the real admin socket (a table of the
//! reported defects, the limits themselves, and a seeded property test), the
//! documentation of every limit, and connections on the agent port that
//! complete TLS and then stall.
//!
//! The property test prints its seed; rerun one with `SIGIL_PROPTEST_SEED`,
//! and scale it with `SIGIL_PROPTEST_CASES` (default 500).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::admin::{
    AgentId, CreateEntryRequest, CreateJoinTokenRequest, EntryFields, EntryId, ListEntriesRequest,
    UpdateEntryRequest,
};
use proto::issuer as pb;
use sigil_issuer::limits::*;
use sigil_issuer::store::Table;
use sigil_tests::{python, run, TestIssuer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;

fn selector(kind: &str, value: impl Into<String>) -> pb::Selector {
    pb::Selector {
        r#type: kind.into(),
        value: value.into(),
    }
}

fn good_fields(spiffe_id: &str) -> EntryFields {
    EntryFields {
        spiffe_id: spiffe_id.into(),
        parent_id: "spiffe://example.org/agent/join_token/abc".into(),
        selectors: vec![selector("unix", "uid:1000")],
        ..Default::default()
    }
}

async fn entry_count(issuer: &TestIssuer) -> i64 {
    issuer
        .running
        .state
        .store
        .count(Table::Entries)
        .await
        .unwrap()
}

/// Join tokens in the issuer's database, read with Python's sqlite3 so the
/// count does not go through the code under test.
fn join_token_count(issuer: &TestIssuer) -> u64 {
    let db = issuer.dir.path().join("data/sigil.db");
    let (ok, stdout, stderr) = run(std::process::Command::new(python()).args([
        "-c",
        "import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute('SELECT COUNT(*) FROM join_tokens').fetchone()[0])",
        db.to_str().unwrap(),
    ]));
    assert!(ok, "{stderr}");
    stdout.trim().parse().unwrap()
}

/// Asserts an INVALID_ARGUMENT refusal whose message starts with `prefix`
/// and stays short.
fn assert_refused<T: std::fmt::Debug>(result: Result<T, tonic::Status>, prefix: &str) {
    let status = result.expect_err(prefix);
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with(prefix),
        "expected {prefix:?}, got {:?}",
        status.message()
    );
    assert!(status.message().len() < 1024, "{}", status.message());
}

#[tokio::test]
async fn reported_defects_are_refused_naming_field_and_limit() {
    let issuer = TestIssuer::start().await;
    let mut admin = issuer.admin().await;
    let huge_parent = format!("spiffe://example.org/{}", "p".repeat(100 * 1024));
    let cases: Vec<(EntryFields, &str)> = vec![
        (
            EntryFields {
                selectors: vec![selector("unix", "uid:abc")],
                ..good_fields("spiffe://example.org/a")
            },
            "selectors: unix:uid:abc: uid must be a number",
        ),
        (
            EntryFields {
                selectors: vec![selector("unx", "uid")],
                ..good_fields("spiffe://example.org/b")
            },
            "selectors: unknown selector type \"unx\"; known types: unix:uid, unix:gid, unix:user, \
             unix:group, unix:supplementary_gid, unix:path, unix:sha256, k8s:ns, k8s:sa, \
             k8s:pod-name, k8s:pod-uid, k8s:pod-label, k8s:container-name, k8s:container-image, \
             k8s:node-name, spiffe_id",
        ),
        (
            EntryFields {
                parent_id: huge_parent,
                ..good_fields("spiffe://example.org/c")
            },
            "parent_id: 102421 bytes; at most 2048",
        ),
        (
            EntryFields {
                selectors: vec![selector("unix", "uid:1"); 3000],
                ..good_fields("spiffe://example.org/d")
            },
            "selectors: 3000 selectors; at most 64 per entry",
        ),
        (
            EntryFields {
                selectors: vec![selector("k8s_psat", "cluster:c")],
                ..good_fields("spiffe://example.org/e")
            },
            "selectors: k8s_psat:cluster:c: k8s_psat selectors select agents, not workloads",
        ),
        (
            EntryFields {
                selectors: vec![selector("unix", "path:bin/web")],
                ..good_fields("spiffe://example.org/f")
            },
            "selectors: unix:path:bin/web: path must be an absolute path",
        ),
        (
            EntryFields {
                selectors: vec![selector("unix", "sha256:ABCD")],
                ..good_fields("spiffe://example.org/g")
            },
            "selectors: unix:sha256:ABCD: sha256 must be 64 lowercase hex digits",
        ),
        (
            EntryFields {
                x509_svid_ttl: MAX_SVID_TTL_SECS + 1,
                ..good_fields("spiffe://example.org/h")
            },
            "x509_svid_ttl: 31536001; must be from 0 to 31536000 seconds",
        ),
        (
            EntryFields {
                dns_names: vec!["web.example.org".into(); 65],
                ..good_fields("spiffe://example.org/i")
            },
            "dns_names: 65 DNS names; at most 64 per entry",
        ),
        (
            EntryFields {
                federates_with: vec!["other.org".into(); 65],
                ..good_fields("spiffe://example.org/j")
            },
            "federates_with: 65 trust domains; at most 64 per entry",
        ),
        (
            EntryFields {
                hint: "h".repeat(1025),
                ..good_fields("spiffe://example.org/k")
            },
            "hint: 1025 bytes; at most 1024",
        ),
        (
            EntryFields {
                expires_at: MAX_EXPIRES_AT + 1,
                ..good_fields("spiffe://example.org/l")
            },
            "expires_at: 253402300800; must be from 0 to 253402300799",
        ),
    ];
    for (fields, expected) in cases {
        let result = admin
            .create_entry(CreateEntryRequest {
                entry: Some(fields),
            })
            .await;
        assert_refused(result, expected);
    }
    assert_refused(
        admin.create_entry(CreateEntryRequest { entry: None }).await,
        "entry: required",
    );
    assert_eq!(entry_count(&issuer).await, 0, "nothing was written");
}

#[tokio::test]
async fn every_limit_is_accepted_at_its_value_and_read_back() {
    let issuer = TestIssuer::start().await;
    let mut admin = issuer.admin().await;
    let id_of = |td: &str, len: usize| {
        let prefix = format!("spiffe://{td}/");
        format!("{prefix}{}", "s".repeat(len - prefix.len()))
    };
    let label = "d".repeat(63);
    let longest_name = format!("{label}.{label}.{label}.{}", "e".repeat(61));
    let agent = id_of("example.org", MAX_SPIFFE_ID_BYTES).replacen("/s", "/agent/s", 1)
        [..MAX_SPIFFE_ID_BYTES]
        .to_owned();
    let mut selectors = vec![selector("spiffe_id", agent)];
    selectors.push(selector(
        "unix",
        format!("path:/{}", "p".repeat(MAX_SELECTOR_VALUE_BYTES - 6)),
    ));
    selectors.extend(
        (2..MAX_SELECTORS_PER_ENTRY).map(|i| selector("unix", format!("supplementary_gid:{i}"))),
    );
    let fields = EntryFields {
        spiffe_id: id_of("example.org", MAX_SPIFFE_ID_BYTES),
        parent_id: id_of("other.org", MAX_SPIFFE_ID_BYTES),
        selectors,
        x509_svid_ttl: MAX_SVID_TTL_SECS,
        jwt_svid_ttl: MAX_SVID_TTL_SECS,
        dns_names: (0..MAX_DNS_NAMES_PER_ENTRY)
            .map(|i| format!("{i:02}{}", &longest_name[2..]))
            .collect(),
        hint: "ü".repeat(MAX_HINT_BYTES / 2),
        federates_with: (0..MAX_FEDERATES_WITH_PER_ENTRY)
            .map(|i| format!("{i:02}{}", "t".repeat(MAX_TRUST_DOMAIN_BYTES - 2)))
            .collect(),
        admin: true,
        downstream: true,
        expires_at: MAX_EXPIRES_AT,
        // Owner binding has its own limits, tested with owners.
        owner_id: String::new(),
        consent: String::new(),
    };
    assert!(fields.dns_names.iter().all(|n| n.len() == 253));
    let created = admin
        .create_entry(CreateEntryRequest {
            entry: Some(fields.clone()),
        })
        .await
        .expect("an entry at every limit is accepted")
        .into_inner();
    let read = admin
        .get_entry(EntryId {
            id: created.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read, created);
    assert_stored_as(&read, &fields);

    // One past each limit on the stored entry is refused and changes nothing.
    type Mutate = fn(&mut EntryFields);
    let past: Vec<(Mutate, &str)> = vec![
        (
            |f| f.spiffe_id.push('s'),
            "spiffe_id: 2049 bytes; at most 2048",
        ),
        (
            |f| f.parent_id.push('s'),
            "parent_id: 2049 bytes; at most 2048",
        ),
        (
            |f| f.selectors.push(selector("unix", "uid:1")),
            "selectors: 65 selectors; at most 64 per entry",
        ),
        (
            |f| f.selectors[1].value.push('p'),
            "selectors: unix:path:/ppp",
        ),
        (
            |f| f.selectors[0].value.push('s'),
            "selectors: spiffe_id:spiffe://example.org/agent/sss",
        ),
        (
            |f| f.jwt_svid_ttl += 1,
            "jwt_svid_ttl: 31536001; must be from 0 to 31536000 seconds",
        ),
        (
            |f| f.dns_names.push("x.org".into()),
            "dns_names: 65 DNS names; at most 64 per entry",
        ),
        (|f| f.dns_names[3].insert(0, 'x'), "dns_names: x03ddd"),
        (|f| f.hint.push('h'), "hint: 1025 bytes; at most 1024"),
        (
            |f| f.federates_with.push("x.org".into()),
            "federates_with: 65 trust domains; at most 64 per entry",
        ),
        (|f| f.federates_with[0].push('t'), "federates_with: 00ttt"),
        (
            |f| f.expires_at += 1,
            "expires_at: 253402300800; must be from 0 to 253402300799",
        ),
    ];
    for (mutate, expected) in past {
        let mut changed = fields.clone();
        mutate(&mut changed);
        let result = admin
            .update_entry(UpdateEntryRequest {
                id: created.id.clone(),
                entry: Some(changed),
                revision: 0,
            })
            .await;
        assert_refused(result, expected);
    }
    let after = admin
        .get_entry(EntryId {
            id: created.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after, created, "refused updates wrote nothing");
}

#[tokio::test]
async fn other_admin_arguments_are_bounded() {
    let issuer = TestIssuer::start().await;
    let mut admin = issuer.admin().await;
    let long_id = format!("spiffe://example.org/{}", "a".repeat(3000));
    let long_entry_id = "e".repeat(MAX_ENTRY_ID_BYTES + 1);

    for id in [String::new(), long_entry_id.clone()] {
        let prefix = if id.is_empty() {
            "id: required".to_owned()
        } else {
            format!("id: {} bytes; at most {MAX_ENTRY_ID_BYTES}", id.len())
        };
        assert_refused(admin.get_entry(EntryId { id: id.clone() }).await, &prefix);
        assert_refused(
            admin.delete_entry(EntryId { id: id.clone() }).await,
            &prefix,
        );
        assert_refused(
            admin
                .update_entry(UpdateEntryRequest {
                    id: id.clone(),
                    entry: Some(good_fields("spiffe://example.org/x")),
                    revision: 0,
                })
                .await,
            &prefix,
        );
    }
    // A well-formed but unknown entry ID is simply not found.
    let missing = admin
        .get_entry(EntryId {
            id: "e".repeat(MAX_ENTRY_ID_BYTES),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    for (request, prefix) in [
        (
            ListEntriesRequest {
                spiffe_id: long_id.clone(),
                parent_id: String::new(),
            },
            "spiffe_id: 3021 bytes; at most 2048",
        ),
        (
            ListEntriesRequest {
                spiffe_id: String::new(),
                parent_id: long_id.clone(),
            },
            "parent_id: 3021 bytes; at most 2048",
        ),
        (
            ListEntriesRequest {
                spiffe_id: "web".into(),
                parent_id: String::new(),
            },
            "spiffe_id: web: not a SPIFFE ID",
        ),
    ] {
        assert_refused(admin.list_entries(request).await, prefix);
    }
    let listed = admin
        .list_entries(ListEntriesRequest {
            spiffe_id: "spiffe://example.org/none".into(),
            parent_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.entries.is_empty());

    let agent = |spiffe_id: &str| AgentId {
        spiffe_id: spiffe_id.into(),
    };
    let too_long = "spiffe_id: 3021 bytes; at most 2048";
    assert_refused(admin.get_agent(agent(&long_id)).await, too_long);
    assert_refused(admin.evict_agent(agent(&long_id)).await, too_long);
    assert_refused(admin.ban_agent(agent(&long_id)).await, too_long);
    assert_refused(
        admin.get_agent(agent("spiffe://other.org/agent/x")).await,
        "spiffe_id: spiffe://other.org/agent/x: in trust domain \"other.org\"",
    );

    let tokens_before = join_token_count(&issuer);
    let token = |ttl: i64, spiffe_id: &str| CreateJoinTokenRequest {
        ttl,
        spiffe_id: spiffe_id.into(),
    };
    for (request, prefix) in [
        (
            token(MAX_JOIN_TOKEN_TTL_SECS + 1, ""),
            "ttl: 31536001; must be from 0 to 31536000 seconds",
        ),
        (token(-1, ""), "ttl: -1; must be from 0 to 31536000"),
        (token(0, &long_id), too_long),
        (
            token(0, "spiffe://example.org"),
            "spiffe_id: spiffe://example.org: an entry's SPIFFE ID needs a path",
        ),
        (
            token(0, "spiffe://example.org/agent/x"),
            "spiffe_id: spiffe://example.org/agent/x: the /agent/ path is reserved",
        ),
        (
            token(0, "spiffe://other.org/node"),
            "spiffe_id: spiffe://other.org/node: in trust domain",
        ),
    ] {
        assert_refused(admin.create_join_token(request).await, prefix);
    }
    assert_eq!(join_token_count(&issuer), tokens_before, "no token written");
    assert_eq!(entry_count(&issuer).await, 0, "no alias written");

    // The longest TTL and a valid alias still work.
    admin
        .create_join_token(token(
            MAX_JOIN_TOKEN_TTL_SECS,
            "spiffe://example.org/node/a",
        ))
        .await
        .unwrap();
    assert_eq!(join_token_count(&issuer), tokens_before + 1);
    let aliases = admin
        .list_entries(ListEntriesRequest {
            spiffe_id: "spiffe://example.org/node/a".into(),
            parent_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(aliases.len(), 1);
    assert_eq!(aliases[0].selectors[0].r#type, "spiffe_id");
    assert_eq!(aliases[0].selectors[0].value, aliases[0].parent_id);
}

#[test]
fn docs_list_every_limit_with_its_value() {
    let path = sigil_tests::workspace_root().join("docs/limits.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let grouped = |n: i64| {
        let digits = n.to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    };
    let limits: Vec<(&str, i64)> = vec![
        ("MAX_SPIFFE_ID_BYTES", MAX_SPIFFE_ID_BYTES as i64),
        ("MAX_TRUST_DOMAIN_BYTES", MAX_TRUST_DOMAIN_BYTES as i64),
        ("MAX_SELECTORS_PER_ENTRY", MAX_SELECTORS_PER_ENTRY as i64),
        ("MAX_SELECTOR_VALUE_BYTES", MAX_SELECTOR_VALUE_BYTES as i64),
        ("MAX_DNS_NAMES_PER_ENTRY", MAX_DNS_NAMES_PER_ENTRY as i64),
        ("MAX_DNS_NAME_BYTES", MAX_DNS_NAME_BYTES as i64),
        ("MAX_DNS_LABEL_BYTES", MAX_DNS_LABEL_BYTES as i64),
        (
            "MAX_FEDERATES_WITH_PER_ENTRY",
            MAX_FEDERATES_WITH_PER_ENTRY as i64,
        ),
        ("MAX_HINT_BYTES", MAX_HINT_BYTES as i64),
        ("MAX_SVID_TTL_SECS", MAX_SVID_TTL_SECS),
        ("MAX_JOIN_TOKEN_TTL_SECS", MAX_JOIN_TOKEN_TTL_SECS),
        ("MAX_EXPIRES_AT", MAX_EXPIRES_AT),
        ("MAX_ENTRY_ID_BYTES", MAX_ENTRY_ID_BYTES as i64),
        (
            "TLS_HANDSHAKE_TIMEOUT",
            TLS_HANDSHAKE_TIMEOUT.as_secs() as i64,
        ),
        (
            "HTTP2_PREFACE_TIMEOUT",
            HTTP2_PREFACE_TIMEOUT.as_secs() as i64,
        ),
        (
            "HTTP2_KEEPALIVE_INTERVAL",
            HTTP2_KEEPALIVE_INTERVAL.as_secs() as i64,
        ),
        (
            "HTTP2_KEEPALIVE_TIMEOUT",
            HTTP2_KEEPALIVE_TIMEOUT.as_secs() as i64,
        ),
    ];
    for (name, value) in limits {
        let row = doc
            .lines()
            .find(|line| line.starts_with('|') && line.contains(&format!("`{name}`")))
            .unwrap_or_else(|| panic!("{} has no table row for {name}", path.display()));
        assert!(
            row.contains(&grouped(value)),
            "the row for {name} does not give {}: {row}",
            grouped(value)
        );
    }
    for kind in sigil_issuer::registration::SELECTOR_TYPES {
        assert!(
            doc.contains(&format!("`{kind}")),
            "docs/limits.md does not describe selector type {kind}"
        );
    }
}

// ---------------------------------------------------------------------------
// Property test: generated entries through the real admin API.

/// xorshift64*: small, seeded, and the same on every platform.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// A number in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    fn percent(&mut self, p: usize) -> bool {
        self.below(100) < p
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    /// A length up to `max`, often at or next to it.
    fn len_up_to(&mut self, max: usize) -> usize {
        match self.below(6) {
            0 => max,
            1 => max.saturating_sub(1),
            2 => self.range(0, max.min(8)),
            _ => self.range(0, max),
        }
    }

    fn string_from(&mut self, alphabet: &[char], len: usize) -> String {
        (0..len).map(|_| self.pick(alphabet)).collect()
    }

    /// Any text of at most `max_bytes`: ASCII, controls, NUL, accents,
    /// other scripts and emoji.
    fn text(&mut self, max_bytes: usize) -> String {
        const CHARS: &[char] = &[
            'a', 'Z', '0', ' ', ':', '/', '.', '-', '_', '\0', '\n', '\t', '\u{7f}', 'é', 'ß', 'Ж',
            '中', '🦀', '\u{200b}', '"', '\\', '%',
        ];
        let target = self.len_up_to(max_bytes);
        let mut out = String::new();
        loop {
            let c = self.pick(CHARS);
            if out.len() + c.len_utf8() > target {
                break;
            }
            out.push(c);
        }
        while out.len() < target {
            out.push('a');
        }
        out
    }
}

const ID_CHARS: &[char] = &['a', 'z', 'A', 'Z', '0', '9', '.', '-', '_', 'q', 'x', 'M'];
const TD_CHARS: &[char] = &['a', 'b', 'z', '0', '7', '-', '_', '.'];
const LDH: &[char] = &['a', 'k', 'z', 'A', 'Q', '0', '5', '9', '-'];

/// A generated value and whether the issuer must accept it.
struct Gen<T> {
    value: T,
    valid: bool,
}

fn valid<T>(value: T) -> Gen<T> {
    Gen { value, valid: true }
}

fn invalid<T>(value: T) -> Gen<T> {
    Gen {
        value,
        valid: false,
    }
}

/// A valid path segment of `len` characters (never `.` or `..`).
fn segment(rng: &mut Rng, len: usize) -> String {
    let mut s = rng.string_from(ID_CHARS, len);
    if s.chars().all(|c| c == '.') {
        s.replace_range(0..1, "a");
    }
    s
}

/// A valid SPIFFE ID of exactly `len` bytes starting with `prefix` (which
/// ends in a path segment, or is a bare trust domain ID).
fn spiffe_id_of_len(rng: &mut Rng, prefix: &str, len: usize) -> String {
    let mut id = prefix.to_owned();
    while id.len() < len {
        let room = len - id.len();
        if room == 1 {
            // Lengthens the last segment; `a` keeps it from being `.`/`..`.
            id.push('a');
            break;
        }
        let seg = rng.range(1, (room - 1).min(120));
        id.push('/');
        id.push_str(&segment(rng, seg));
    }
    id
}

fn gen_spiffe_id(rng: &mut Rng, case: usize) -> Gen<String> {
    // The case number keeps valid IDs unique, so no entry clashes with another.
    let prefix = format!("spiffe://example.org/c{case}");
    if rng.percent(90) {
        let len = rng.range(prefix.len(), MAX_SPIFFE_ID_BYTES);
        let len = if rng.percent(20) {
            MAX_SPIFFE_ID_BYTES
        } else {
            len
        };
        return valid(spiffe_id_of_len(rng, &prefix, len));
    }
    invalid(match rng.below(14) {
        0 => spiffe_id_of_len(rng, &prefix, MAX_SPIFFE_ID_BYTES + 1),
        1 => spiffe_id_of_len(rng, &prefix, 100 * 1024),
        2 => String::new(),
        3 => format!("spiffe://other.org/c{case}"),
        4 => "spiffe://example.org".into(),
        5 => format!("spiffe://example.org/agent/c{case}"),
        6 => format!("SPIFFE://example.org/c{case}"),
        7 => format!("spiffe://Example.org/c{case}"),
        8 => format!("{prefix}/a b"),
        9 => format!("{prefix}/ü"),
        10 => format!("{prefix}//x"),
        11 => format!("{prefix}/../x"),
        12 => format!("{prefix}/"),
        _ => rng.text(300),
    })
}

fn gen_parent_id(rng: &mut Rng) -> Gen<String> {
    if rng.percent(92) {
        return valid(match rng.below(4) {
            0 => "spiffe://example.org".into(),
            1 => format!("spiffe://example.org/agent/join_token/{:x}", rng.next()),
            _ => {
                let prefix = rng.pick(&["spiffe://example.org/p", "spiffe://other.org/q"]);
                let len = rng.len_up_to(MAX_SPIFFE_ID_BYTES).max(prefix.len());
                spiffe_id_of_len(rng, prefix, len)
            }
        });
    }
    invalid(match rng.below(7) {
        0 => spiffe_id_of_len(rng, "spiffe://example.org/p", MAX_SPIFFE_ID_BYTES + 1),
        1 => spiffe_id_of_len(rng, "spiffe://example.org/p", 100 * 1024),
        2 => String::new(),
        3 => "not an id".into(),
        4 => "spiffe://example.org/ünï".into(),
        5 => "spiffe://example.org/a?b".into(),
        _ => rng.text(100),
    })
}

fn number(rng: &mut Rng) -> String {
    match rng.below(4) {
        0 => "0".into(),
        1 => u32::MAX.to_string(),
        _ => (rng.next() as u32).to_string(),
    }
}

fn name(rng: &mut Rng, max: usize) -> String {
    const NAME: &[char] = &['a', 'z', 'W', '0', '_', '-', '.', '$', 'é', '中'];
    let mut s = String::new();
    let target = rng.len_up_to(max).max(1);
    while s.len() < target {
        let c = rng.pick(NAME);
        if s.len() + c.len_utf8() > target {
            s.push('n');
        } else {
            s.push(c);
        }
    }
    s
}

fn path(rng: &mut Rng, max: usize) -> String {
    const PATH: &[char] = &['a', 'Z', '0', ' ', '.', '-', ':', '\n', 'é', '🦀'];
    let target = rng.len_up_to(max).max(2);
    let mut p = String::new();
    while p.len() < target {
        let room = target - p.len();
        if room == 1 {
            p.push('z');
            break;
        }
        p.push('/');
        let mut seg = String::new();
        let seg_len = rng.range(1, (room - 1).min(40));
        while seg.len() < seg_len {
            let c = rng.pick(PATH);
            if seg.len() + c.len_utf8() > seg_len {
                seg.push('s');
            } else {
                seg.push(c);
            }
        }
        if seg == "." || seg == ".." {
            seg = "s".repeat(seg.len());
        }
        p.push_str(&seg);
    }
    p
}

fn hex64(rng: &mut Rng) -> String {
    (0..4).map(|_| format!("{:016x}", rng.next())).collect()
}

fn valid_selector(rng: &mut Rng, short: bool) -> pb::Selector {
    let room = MAX_SELECTOR_VALUE_BYTES;
    match rng.below(if short { 3 } else { 8 }) {
        0 => selector("unix", format!("uid:{}", number(rng))),
        1 => selector("unix", format!("gid:{}", number(rng))),
        2 => selector("unix", format!("supplementary_gid:{}", number(rng))),
        3 => selector("unix", format!("user:{}", name(rng, room - 5))),
        4 => selector("unix", format!("group:{}", name(rng, room - 6))),
        5 => selector("unix", format!("path:{}", path(rng, room - 5))),
        6 => selector("unix", format!("sha256:{}", hex64(rng))),
        _ => {
            let prefix = format!("spiffe://example.org/agent/join_token/{:x}", rng.next());
            let len = rng.len_up_to(MAX_SPIFFE_ID_BYTES).max(prefix.len());
            selector("spiffe_id", spiffe_id_of_len(rng, &prefix, len))
        }
    }
}

fn invalid_selector(rng: &mut Rng) -> pb::Selector {
    let hash = hex64(rng);
    let unix = |v: &str| selector("unix", v);
    match rng.below(30) {
        0 => selector("unx", "uid:1"),
        1 => selector(
            "k8s",
            rng.pick(&["colour:blue", "ns:", "ns:a b", "pod-label:x\ty"]),
        ),
        2 => selector("k8s_psat", "cluster:c"),
        3 => selector("UNIX", "uid:1"),
        4 => selector("", "uid:1"),
        5 => {
            let mut kind = rng.text(40);
            if kind == "unix" || kind == "spiffe_id" {
                kind.push('x');
            }
            selector(&kind, "uid:1")
        }
        6 => unix("foo:1"),
        7 => unix("uid"),
        8 => unix("uid:"),
        9 => unix(rng.pick(&["uid:abc", "gid:-1", "uid:01", "gid:+7", "uid:1 "])),
        10 => unix(rng.pick(&["uid:4294967296", "supplementary_gid:١", "uid:0x10"])),
        11 => unix(rng.pick(&["user:", "user:a:b", "group:a b", "user:\u{7}x", "group:\t"])),
        12 => unix(rng.pick(&["path:", "path:rel/x", "path:/", "path:/a/../b", "path://a"])),
        13 => unix(rng.pick(&["path:/a/", "path:/a/./b", "path:/a\0b"])),
        14 => unix(&format!("path:/{}", "p".repeat(MAX_SELECTOR_VALUE_BYTES))),
        15 => unix(&format!("sha256:A{}", hash[1..].to_uppercase())),
        16 => unix(&format!("sha256:{}", &hash[1..])),
        17 => unix(&format!("sha256:{hash}f")),
        18 => unix(&format!("sha256:{}g", &hash[1..])),
        19 => selector("spiffe_id", "not an id"),
        20 => selector("spiffe_id", "spiffe://other.org/agent/join_token/ab"),
        21 => selector("spiffe_id", "spiffe://example.org/workload"),
        22 => selector("spiffe_id", "spiffe://example.org"),
        23 => selector(
            "spiffe_id",
            spiffe_id_of_len(rng, "spiffe://example.org/agent/x", MAX_SPIFFE_ID_BYTES + 1),
        ),
        24 => unix(&format!("user:{}", "u".repeat(MAX_SELECTOR_VALUE_BYTES))),
        25 => unix(&rng.text(50).replace(':', "")),
        26 => {
            let mut number = rng.text(20);
            if number.bytes().all(|b| b.is_ascii_digit()) {
                number.push('x');
            }
            selector("unix", format!("uid:{number}"))
        }
        // Generated text has no `s`, so it never starts with `spiffe://`.
        27 => selector("spiffe_id", rng.text(80)),
        28 => unix("sha256:"),
        _ => selector("unix:uid", "1"),
    }
}

fn gen_selectors(rng: &mut Rng) -> Gen<Vec<pb::Selector>> {
    let roll = rng.below(100);
    if roll < 4 {
        return invalid(Vec::new());
    }
    if roll < 10 {
        let some = rng.range(MAX_SELECTORS_PER_ENTRY + 1, 500);
        let count = rng.pick(&[MAX_SELECTORS_PER_ENTRY + 1, 3000, some]);
        return invalid((0..count).map(|_| valid_selector(rng, true)).collect());
    }
    let count = match rng.below(5) {
        0 => MAX_SELECTORS_PER_ENTRY,
        1 => rng.range(1, MAX_SELECTORS_PER_ENTRY),
        _ => rng.range(1, 4),
    };
    let mut selectors: Vec<pb::Selector> = (0..count).map(|_| valid_selector(rng, false)).collect();
    if roll < 22 {
        let at = rng.below(selectors.len());
        selectors[at] = invalid_selector(rng);
        return invalid(selectors);
    }
    valid(selectors)
}

fn gen_ttl(rng: &mut Rng) -> Gen<i64> {
    if rng.percent(92) {
        return valid(match rng.below(4) {
            0 => 0,
            1 => MAX_SVID_TTL_SECS,
            _ => rng.range(1, MAX_SVID_TTL_SECS as usize) as i64,
        });
    }
    let negative = -((rng.next() >> 2) as i64) - 1;
    invalid(rng.pick(&[-1, MAX_SVID_TTL_SECS + 1, i64::MIN, i64::MAX, negative]))
}

fn dns_label(rng: &mut Rng, len: usize) -> String {
    let mut label = rng.string_from(LDH, len);
    if label.starts_with('-') {
        label.replace_range(0..1, "a");
    }
    if label.ends_with('-') {
        label.pop();
        label.push('b');
    }
    label
}

fn valid_dns_name(rng: &mut Rng) -> String {
    let wildcard = rng.percent(15);
    let target = rng
        .len_up_to(MAX_DNS_NAME_BYTES)
        .max(if wildcard { 3 } else { 1 });
    let mut name = if wildcard {
        "*".to_owned()
    } else {
        String::new()
    };
    while name.len() < target {
        let room = target - name.len() - usize::from(!name.is_empty());
        if room == 0 {
            // One byte left and it would be a dot: lengthen the last label if it can.
            let last = name.rsplit('.').next().unwrap_or_default();
            if last != "*" && last.len() < MAX_DNS_LABEL_BYTES {
                name.push('c');
            }
            break;
        }
        if !name.is_empty() {
            name.push('.');
        }
        let len = rng.range(1, room.min(MAX_DNS_LABEL_BYTES));
        name.push_str(&dns_label(rng, len));
    }
    name
}

fn gen_dns_names(rng: &mut Rng) -> Gen<Vec<String>> {
    let roll = rng.below(100);
    if roll < 4 {
        let count = rng.range(MAX_DNS_NAMES_PER_ENTRY + 1, 200);
        return invalid((0..count).map(|_| "web.example.org".to_owned()).collect());
    }
    let count = match rng.below(6) {
        0 => MAX_DNS_NAMES_PER_ENTRY,
        1 => rng.range(0, MAX_DNS_NAMES_PER_ENTRY),
        _ => rng.range(0, 3),
    };
    let mut names: Vec<String> = (0..count).map(|_| valid_dns_name(rng)).collect();
    if roll < 12 {
        let bad = match rng.below(14) {
            0 => String::new(),
            1 => "bad name".into(),
            2 => "-x.org".into(),
            3 => "x-.org".into(),
            4 => "a..b".into(),
            5 => "x.org.".into(),
            6 => "*".into(),
            7 => "a.*.org".into(),
            8 => "ü.org".into(),
            9 => format!("{}.org", "a".repeat(MAX_DNS_LABEL_BYTES + 1)),
            10 => format!("{}.{}", "a".repeat(63), vec!["b".repeat(63); 3].join(".")),
            11 => "_x.org".into(),
            12 => "*.*.org".into(),
            _ => rng
                .text(60)
                .replace(|c: char| c.is_ascii_alphanumeric(), "_"),
        };
        if names.is_empty() {
            names.push(bad);
        } else {
            let at = rng.below(names.len());
            names[at] = bad;
        }
        return invalid(names);
    }
    valid(names)
}

fn gen_hint(rng: &mut Rng) -> Gen<String> {
    if rng.percent(93) {
        return valid(match rng.below(5) {
            0 => String::new(),
            1 => "h".repeat(MAX_HINT_BYTES),
            _ => rng.text(MAX_HINT_BYTES),
        });
    }
    invalid(match rng.below(3) {
        0 => "h".repeat(MAX_HINT_BYTES + 1),
        1 => "é".repeat(MAX_HINT_BYTES / 2 + 1),
        _ => rng.text(100 * 1024).repeat(2) + &"x".repeat(MAX_HINT_BYTES + 1),
    })
}

fn valid_trust_domain(rng: &mut Rng) -> String {
    let len = rng.len_up_to(MAX_TRUST_DOMAIN_BYTES - 1).max(1);
    // The leading `f` keeps it from being this issuer's own.
    let name = format!("f{}", rng.string_from(TD_CHARS, len));
    if rng.percent(30) {
        format!("spiffe://{name}")
    } else {
        name
    }
}

fn gen_federates_with(rng: &mut Rng) -> Gen<Vec<String>> {
    let roll = rng.below(100);
    if roll < 4 {
        let count = rng.range(MAX_FEDERATES_WITH_PER_ENTRY + 1, 300);
        return invalid((0..count).map(|i| format!("td{i}.org")).collect());
    }
    let count = match rng.below(6) {
        0 => MAX_FEDERATES_WITH_PER_ENTRY,
        1 => rng.range(0, MAX_FEDERATES_WITH_PER_ENTRY),
        _ => rng.range(0, 3),
    };
    let mut tds: Vec<String> = (0..count).map(|_| valid_trust_domain(rng)).collect();
    if roll < 12 {
        let bad = match rng.below(9) {
            0 => "Bad.org".into(),
            1 => "example.org".into(),
            2 => "spiffe://example.org".into(),
            3 => "t".repeat(MAX_TRUST_DOMAIN_BYTES + 1),
            4 => format!("spiffe://{}", "t".repeat(MAX_TRUST_DOMAIN_BYTES + 1)),
            5 => "spiffe://x.org/path".into(),
            6 => String::new(),
            7 => "ü.org".into(),
            _ => "x y".into(),
        };
        if tds.is_empty() {
            tds.push(bad);
        } else {
            let at = rng.below(tds.len());
            tds[at] = bad;
        }
        return invalid(tds);
    }
    valid(tds)
}

fn gen_expires_at(rng: &mut Rng) -> Gen<i64> {
    if rng.percent(93) {
        return valid(match rng.below(4) {
            0 => 0,
            1 => MAX_EXPIRES_AT,
            _ => (rng.next() % MAX_EXPIRES_AT as u64) as i64,
        });
    }
    invalid(rng.pick(&[-1, MAX_EXPIRES_AT + 1, i64::MAX, i64::MIN]))
}

/// A generated entry and the fields the issuer must refuse, if any.
fn gen_entry(rng: &mut Rng, case: usize) -> (EntryFields, BTreeSet<&'static str>) {
    let mut bad = BTreeSet::new();
    let mut take = |field: &'static str, valid: bool| {
        if !valid {
            bad.insert(field);
        }
    };
    let spiffe_id = gen_spiffe_id(rng, case);
    take("spiffe_id", spiffe_id.valid);
    let parent_id = gen_parent_id(rng);
    take("parent_id", parent_id.valid);
    let selectors = gen_selectors(rng);
    take("selectors", selectors.valid);
    let x509 = gen_ttl(rng);
    take("x509_svid_ttl", x509.valid);
    let jwt = gen_ttl(rng);
    take("jwt_svid_ttl", jwt.valid);
    let dns = gen_dns_names(rng);
    take("dns_names", dns.valid);
    let hint = gen_hint(rng);
    take("hint", hint.valid);
    let federates = gen_federates_with(rng);
    take("federates_with", federates.valid);
    let expires = gen_expires_at(rng);
    take("expires_at", expires.valid);
    let fields = EntryFields {
        spiffe_id: spiffe_id.value,
        parent_id: parent_id.value,
        selectors: selectors.value,
        x509_svid_ttl: x509.value,
        jwt_svid_ttl: jwt.value,
        dns_names: dns.value,
        hint: hint.value,
        federates_with: federates.value,
        admin: rng.percent(50),
        downstream: rng.percent(50),
        expires_at: expires.value,
        owner_id: String::new(),
        consent: String::new(),
    };
    (fields, bad)
}

/// The store keeps an entry's selectors as a sorted set; everything else as given.
fn assert_stored_as(entry: &pb::Entry, fields: &EntryFields) {
    let set = |s: &[pb::Selector]| -> BTreeSet<(String, String)> {
        s.iter()
            .map(|s| (s.r#type.clone(), s.value.clone()))
            .collect()
    };
    assert_eq!(entry.spiffe_id, fields.spiffe_id);
    assert_eq!(entry.parent_id, fields.parent_id);
    assert_eq!(set(&entry.selectors), set(&fields.selectors));
    assert_eq!(entry.selectors.len(), set(&fields.selectors).len());
    assert_eq!(entry.x509_svid_ttl, fields.x509_svid_ttl);
    assert_eq!(entry.jwt_svid_ttl, fields.jwt_svid_ttl);
    assert_eq!(entry.dns_names, fields.dns_names);
    assert_eq!(entry.hint, fields.hint);
    assert_eq!(entry.federates_with, fields.federates_with);
    assert_eq!(entry.admin, fields.admin);
    assert_eq!(entry.downstream, fields.downstream);
    assert_eq!(entry.expires_at, fields.expires_at);
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_entries_are_stored_exactly_or_refused_by_field() {
    let seed = env_number("SIGIL_PROPTEST_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    let cases = env_number("SIGIL_PROPTEST_CASES").unwrap_or(500) as usize;
    println!("property test seed {seed} ({cases} cases); rerun with SIGIL_PROPTEST_SEED={seed}");
    let mut rng = Rng::new(seed);
    let issuer = TestIssuer::start().await;
    let mut admin = issuer.admin().await;
    let mut stored: Vec<pb::Entry> = Vec::new();
    let (mut accepted, mut refused) = (0, 0);
    let started = Instant::now();

    for case in 0..cases {
        let (fields, bad) = gen_entry(&mut rng, case);
        let context =
            |what: &str| format!("seed {seed} case {case}: {what}; invalid fields {bad:?}");
        let before = entry_count(&issuer).await;
        // Some cases replace a stored entry instead of creating one.
        let target = (!stored.is_empty() && rng.percent(25)).then(|| rng.below(stored.len()));
        let result = match target {
            Some(at) => {
                admin
                    .update_entry(UpdateEntryRequest {
                        id: stored[at].id.clone(),
                        entry: Some(fields.clone()),
                        revision: stored[at].revision,
                    })
                    .await
            }
            None => {
                admin
                    .create_entry(CreateEntryRequest {
                        entry: Some(fields.clone()),
                    })
                    .await
            }
        };
        match result {
            Ok(response) => {
                let entry = response.into_inner();
                assert!(bad.is_empty(), "{}", context("accepted"));
                let read = admin
                    .get_entry(EntryId {
                        id: entry.id.clone(),
                    })
                    .await
                    .unwrap_or_else(|e| panic!("{}: {e:?}", context("read back")))
                    .into_inner();
                assert_eq!(read, entry, "{}", context("read back differs"));
                assert_stored_as(&read, &fields);
                let expected_count = before + i64::from(target.is_none());
                assert_eq!(
                    entry_count(&issuer).await,
                    expected_count,
                    "{}",
                    context("count")
                );
                match target {
                    Some(at) => {
                        assert_eq!(read.revision, stored[at].revision + 1);
                        stored[at] = read;
                    }
                    None => stored.push(read),
                }
                accepted += 1;
            }
            Err(status) => {
                let message = status.message();
                assert_eq!(
                    status.code(),
                    Code::InvalidArgument,
                    "{}: {status:?}",
                    context("refused with the wrong code")
                );
                let field = message.split(':').next().unwrap_or_default();
                assert!(
                    bad.contains(field),
                    "{}: {message}",
                    context("refusal names a valid field")
                );
                assert!(message.len() < 1024, "{}", context("long message"));
                assert_eq!(entry_count(&issuer).await, before, "{}", context("count"));
                if let Some(at) = target {
                    let now = admin
                        .get_entry(EntryId {
                            id: stored[at].id.clone(),
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    assert_eq!(
                        now,
                        stored[at],
                        "{}",
                        context("refused update changed the entry")
                    );
                }
                refused += 1;
            }
        }
    }
    admin
        .health(proto::admin::Empty {})
        .await
        .expect("the issuer still serves");
    println!(
        "{accepted} accepted, {refused} refused in {:?}",
        started.elapsed()
    );
    assert!(
        cases < 50 || (accepted > cases / 5 && refused > cases / 5),
        "the generator should mix valid and invalid entries: {accepted} accepted, {refused} refused"
    );
}

// ---------------------------------------------------------------------------
// Stalled connections on the agent port.

async fn tls_to(issuer: &TestIssuer) -> tokio_rustls::client::TlsStream<TcpStream> {
    let config = sigil_agent::issuer_client::client_config(
        sigil_agent::issuer_client::ServerTrust::Bundle(&issuer.bundle()),
        None,
    )
    .unwrap();
    let tcp = TcpStream::connect(issuer.running.agent_api_address)
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("sigil-issuer").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake with the issuer")
}

/// Reads (and drops) whatever the server sends until it closes the
/// connection; returns how long that took. Never writes, so pings go
/// unanswered.
async fn time_until_closed(mut stream: impl AsyncRead + Unpin, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = vec![0u8; 16 * 1024];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the issuer kept a stalled connection open for {limit:?}"));
    started.elapsed()
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame: the rest of a client's connection preface.
const EMPTY_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];
const SLACK: Duration = Duration::from_secs(5);

fn assert_cut_near(elapsed: Duration, deadline: Duration, what: &str) {
    assert!(
        elapsed + Duration::from_secs(1) >= deadline && elapsed <= deadline + SLACK,
        "{what}: closed after {elapsed:?}, expected about {deadline:?}"
    );
}

#[tokio::test]
async fn stalled_connections_on_the_agent_port_are_cut_off() {
    let issuer = Arc::new(TestIssuer::start().await);
    let address = issuer.running.agent_api_address;

    // No TLS at all.
    let silent_tcp = tokio::spawn(async move {
        let tcp = TcpStream::connect(address).await.unwrap();
        time_until_closed(tcp, TLS_HANDSHAKE_TIMEOUT + SLACK).await
    });
    // TLS, then nothing.
    let tls_only = {
        let issuer = issuer.clone();
        tokio::spawn(async move {
            let tls = tls_to(&issuer).await;
            time_until_closed(tls, HTTP2_PREFACE_TIMEOUT + SLACK).await
        })
    };
    // TLS, then half a preface.
    let half_preface = {
        let issuer = issuer.clone();
        tokio::spawn(async move {
            let mut tls = tls_to(&issuer).await;
            tls.write_all(&PREFACE[..12]).await.unwrap();
            tls.flush().await.unwrap();
            time_until_closed(tls, HTTP2_PREFACE_TIMEOUT + SLACK).await
        })
    };
    // A full preface, then silence: HTTP/2 keep-alive pings go unanswered.
    let no_pongs = {
        let issuer = issuer.clone();
        tokio::spawn(async move {
            let mut tls = tls_to(&issuer).await;
            tls.write_all(&[PREFACE, EMPTY_SETTINGS].concat())
                .await
                .unwrap();
            tls.flush().await.unwrap();
            time_until_closed(
                tls,
                HTTP2_KEEPALIVE_INTERVAL + HTTP2_KEEPALIVE_TIMEOUT + SLACK,
            )
            .await
        })
    };

    // Stalled connections do not keep real agents out meanwhile.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let agent = issuer.attest().await;
    assert!(agent.id.starts_with("spiffe://example.org/agent/"));

    assert_cut_near(
        silent_tcp.await.unwrap(),
        TLS_HANDSHAKE_TIMEOUT,
        "no TLS handshake",
    );
    assert_cut_near(
        tls_only.await.unwrap(),
        HTTP2_PREFACE_TIMEOUT,
        "TLS without a preface",
    );
    assert_cut_near(
        half_preface.await.unwrap(),
        HTTP2_PREFACE_TIMEOUT,
        "half a preface",
    );
    let elapsed = no_pongs.await.unwrap();
    assert!(
        elapsed + Duration::from_secs(1) >= HTTP2_KEEPALIVE_INTERVAL
            && elapsed <= HTTP2_KEEPALIVE_INTERVAL + HTTP2_KEEPALIVE_TIMEOUT + SLACK,
        "unanswered pings: closed after {elapsed:?}"
    );
}
