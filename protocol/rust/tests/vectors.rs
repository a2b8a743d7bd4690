//! protocol/vectors/envelope.json (every vector: decoded to its meaning, encoded to its frames
//! byte for byte, invalid ones refused with their error and echoed id), PROTOCOL.md's tables,
//! and client.json (the stream and early-failure scenarios), against this crate's pure parts.

mod common;

use common::{hex, load, to_json, to_wire, unhex};
use moorage_client::calls::{ActorLink, CallPlan, PlanSettings, Verdict};
use moorage_client::envelope::{self, StreamMessage};
use moorage_client::errors::{kind_of_code, WireError, KINDS};
use moorage_client::recovery::{Backoff, CircuitBreaker, MATRIX};
use moorage_client::streams::{StreamEvent, StreamTracker};
use moorage_client::Value;
use serde_json::json;

fn meaning_of(kind: &str, frames: &[Vec<u8>]) -> Result<serde_json::Value, moorage_client::errors::DecodeError> {
    Ok(match kind {
        "request" => {
            let r = envelope::decode_request(frames)?;
            let mut m = json!({"id": r.id, "sid": r.sid, "op": r.op, "deadline_ms": r.deadline_ms, "args": to_json(&r.args),
                               "attachments": r.attachments.iter().map(|a| hex(a)).collect::<Vec<_>>()});
            if let Some(ep) = r.epoch {
                m["ep"] = json!(ep); // a pinned resend
            }
            m
        }
        "reply" | "error_reply" => {
            let r = envelope::decode_reply(frames)?;
            if r.ok {
                json!({"id": r.id, "ok": true, "ep": r.epoch, "result": to_json(&r.body),
                       "attachments": r.attachments.iter().map(|a| hex(a)).collect::<Vec<_>>()})
            } else {
                json!({"id": r.id, "ok": false, "ep": r.epoch, "error": to_json(&WireError::from_wire(&r.body).to_wire())})
            }
        }
        _ => {
            let s = envelope::decode_stream(frames)?;
            let mut m = json!({"topic": s.topic, "seq": s.seq, "ep": s.epoch, "body": to_json(&s.body),
                               "attachments": s.attachments.iter().map(|a| hex(a)).collect::<Vec<_>>()});
            if s.welcome {
                m["welcome"] = json!(true);
            }
            m
        }
    })
}

fn frames_of(kind: &str, m: &serde_json::Value) -> Vec<Vec<u8>> {
    let atts: Vec<Vec<u8>> = m.get("attachments").and_then(|a| a.as_array()).map(|a| a.iter().map(|h| unhex(h.as_str().unwrap())).collect()).unwrap_or_default();
    let id = m.get("id").and_then(|i| i.as_u64());
    let ep = m.get("ep").and_then(|e| e.as_str()).unwrap_or("");
    match kind {
        "request" => {
            let frames = envelope::encode_request(id.unwrap(), m["sid"].as_str().unwrap(), m["op"].as_str().unwrap(),
                                                  &moorage_client::codec::encode(&to_wire(&m["args"])), m["deadline_ms"].as_i64(), &atts);
            match m.get("ep").and_then(|e| e.as_str()) {
                Some(pin) => envelope::pin_request(&frames, pin).unwrap(),
                None => frames,
            }
        }
        "reply" => envelope::encode_reply(id, ep, &to_wire(&m["result"]), &atts),
        "error_reply" => envelope::encode_error(id, ep, &WireError::from_wire(&to_wire(&m["error"]))),
        _ if m.get("welcome").is_some() => envelope::encode_welcome(m["topic"].as_str().unwrap(), m["seq"].as_u64().unwrap(), ep),
        _ => envelope::encode_stream(m["topic"].as_str().unwrap(), m["seq"].as_u64().unwrap(), ep, &to_wire(&m["body"]), &atts),
    }
}

#[test]
fn every_envelope_vector() {
    let doc = load("protocol/vectors/envelope.json");
    let vectors = doc["vectors"].as_array().unwrap();
    assert!(vectors.len() >= 66);
    let mut checked = 0;
    for v in vectors {
        let name = v["name"].as_str().unwrap();
        let kind = v["kind"].as_str().unwrap();
        let frames: Vec<Vec<u8>> = v["frames"].as_array().unwrap().iter().map(|f| unhex(f.as_str().unwrap())).collect();
        if v["valid"].as_bool().unwrap() {
            let mut want = v["meaning"].clone();
            want.as_object_mut().unwrap().remove("why");
            let got = meaning_of(kind, &frames).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(got, want, "{name}: decoded");
            if v.get("decode_only").is_none() {
                let enc: Vec<String> = frames_of(kind, &v["meaning"]).iter().map(|f| hex(f)).collect();
                let want: Vec<String> = v["frames"].as_array().unwrap().iter().map(|f| f.as_str().unwrap().to_string()).collect();
                assert_eq!(enc, want, "{name}: encoded");
            }
        } else {
            let e = meaning_of(kind, &frames).err().unwrap_or_else(|| panic!("{name}: decoded without error"));
            assert_eq!(e.error.name, v["error"]["name"].as_str().unwrap(), "{name}");
            assert_eq!(e.error.code, v["error"]["code"].as_i64().unwrap(), "{name}");
            if kind == "request" || kind == "reply" {
                assert_eq!(e.request_id, v["id"].as_u64(), "{name}: echoed id");
            }
        }
        checked += 1;
    }
    assert_eq!(checked, vectors.len());
}

#[test]
fn integers_past_2_53_stay_exact() {
    let doc = load("protocol/vectors/envelope.json");
    let v = doc["vectors"].as_array().unwrap().iter().find(|v| v["name"] == "reply_integers_past_2_53").unwrap();
    let frames: Vec<Vec<u8>> = v["frames"].as_array().unwrap().iter().map(|f| unhex(f.as_str().unwrap())).collect();
    let r = envelope::decode_reply(&frames).unwrap();
    let get = |k: &str| moorage_client::codec::get(&r.body, k).unwrap().clone();
    assert_eq!(get("mtime_ns").as_u64(), Some(1_767_225_600_123_456_789));
    assert_eq!(get("ino").as_u64(), Some(u64::MAX));
    assert_eq!(get("min_int64").as_i64(), Some(i64::MIN));
}

#[test]
fn the_error_table_and_the_matrix_are_protocol_mds() {
    let md = std::fs::read_to_string(common::root().join("protocol/PROTOCOL.md")).unwrap();
    let mut documented = std::collections::HashMap::new();
    for line in md.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() == 10 && cells[1].len() == 3 && cells[1].chars().all(|c| c.is_ascii_digit()) {
            documented.insert(cells[1].parse::<i64>().unwrap(), [cells[2], cells[3], cells[4], cells[5], cells[6], cells[7], cells[8]].map(String::from));
            // A code added to the table later is handled by its wire fields (section 16).
            if kind_of_code(cells[1].parse().unwrap()).is_none() {
                println!("a code this client's table lacks (handled as received): {}", cells[1]);
            }
        }
        if cells.len() == 7 && (cells[2] == "critical" || cells[2] == "recoverable") && MATRIX.iter().any(|r| r.0 == cells[1]) {
            let r = MATRIX.iter().find(|r| r.0 == cells[1] && r.1 == cells[2]).unwrap();
            assert_eq!((r.2, r.3.unwrap_or("-"), r.4.map_or("N/A".to_string(), |n| n.to_string())), (cells[3], cells[4], cells[5].to_string()), "{line}");
        }
    }
    for k in KINDS {
        assert_eq!(documented.get(&k.code), Some(&[format!("`{}`", k.name), k.category.into(), k.severity.into(), k.retryable.to_string(),
                                                     k.fallback_available.to_string(), k.summary.into(), k.fault.into()]), "code {}", k.code);
    }
}

fn event_json(e: &StreamEvent) -> serde_json::Value {
    match e {
        StreamEvent::Loss { topic, first, last, epoch } => json!({"loss": {"topic": topic, "first": first, "last": last, "ep": epoch}}),
        StreamEvent::Reset { topic, old_epoch, new_epoch } => json!({"reset": {"topic": topic, "old_epoch": old_epoch, "new_epoch": new_epoch}}),
        StreamEvent::BytesLost { topic, from_offset, to_offset } => json!({"bytes_lost": {"topic": topic, "from_offset": from_offset, "to_offset": to_offset}}),
        StreamEvent::ByteGap(g) => json!({"byte_gap": {"topic": g.topic, "from_offset": g.from_offset, "to_offset": g.to_offset, "ep": g.epoch, "seq": g.seq}}),
        StreamEvent::Message(m) => json!({"message": {"topic": m.topic, "seq": m.seq, "ep": m.epoch, "body": to_json(&m.body),
                                                       "attachments": m.attachments.iter().map(|a| hex(a)).collect::<Vec<_>>()}}),
    }
}

#[test]
fn every_stream_scenario() {
    let doc = load("protocol/vectors/client.json");
    for sc in doc["streams"].as_array().unwrap() {
        let name = sc["name"].as_str().unwrap();
        let prefixes: Vec<String> = sc["subscription"]["prefixes"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect();
        let mut t = StreamTracker::new(sc["subscription"]["from_seq"].as_u64(), &prefixes);
        for (i, step) in sc["steps"].as_array().unwrap().iter().enumerate() {
            let (events, need) = if let Some(m) = step.get("message") {
                t.on_message(StreamMessage {
                    topic: m["topic"].as_str().unwrap().into(), seq: m["seq"].as_u64().unwrap(), epoch: m["ep"].as_str().unwrap().into(),
                    body: to_wire(&m["body"]), attachments: m["attachments"].as_array().unwrap().iter().map(|a| unhex(a.as_str().unwrap())).collect(),
                    welcome: m.get("welcome").is_some(),
                })
            } else if let Some(a) = step.get("replay_answer") {
                let atts: Vec<Vec<u8>> = a["attachments"].as_array().unwrap().iter().map(|x| unhex(x.as_str().unwrap())).collect();
                t.on_replay(a["topic"].as_str().unwrap(), &to_wire(&a["answer"]), &atts)
            } else {
                (t.on_replay_failed(step["replay_failed"]["topic"].as_str().unwrap()), None)
            };
            let got = json!({"events": events.iter().map(event_json).collect::<Vec<_>>(),
                             "replay": need.map(|n| json!({"topic": n.topic, "from_seq": n.from_seq}))});
            assert_eq!(got, step["expect"], "{name} step {i}");
        }
    }
}

#[test]
fn every_call_scenario() {
    let doc = load("protocol/vectors/client.json");
    let settings = PlanSettings { timeout: 30.0, attempt_timeout: 30.0, backoff: Backoff::default(), remote: false };
    for sc in doc["calls"].as_array().unwrap() {
        let name = sc["name"].as_str().unwrap();
        let actor = sc["actor"].as_str().unwrap();
        let mut link = ActorLink::new(sc["recorded_epoch"].as_str().map(str::to_string));
        let mut plans = std::collections::HashMap::new();
        let mut br = CircuitBreaker::new(5, 0.5);
        for (i, step) in sc["steps"].as_array().unwrap().iter().enumerate() {
            if let Some(s) = step.get("send") {
                let args = to_wire(&s["args"]);
                let mut p = CallPlan::new(s["id"].as_u64().unwrap(), "4242-1f2e3d4c5b6a", actor, s["op"].as_str().unwrap(), &args,
                                          moorage_client::codec::encode(&args), s["idempotent"].as_bool().unwrap(), settings, None, &[], 0.0);
                p.start(0.0, &mut br, sc["recorded_epoch"].as_str());
                link.sent(p.id);
                plans.insert(p.id, p);
                continue;
            }
            let mut got = serde_json::Map::new();
            let changes = if step.get("disconnect").is_some() {
                link.on_disconnect()
            } else {
                let id = step["reply"]["id"].as_u64().unwrap();
                let ep = step["reply"]["ep"].as_str().unwrap();
                link.finished(id);
                let changes = link.on_epoch(ep);
                got.insert(id.to_string(), json!({"outcome": "done"}));
                changes
            };
            for ch in changes {
                let p = plans.get_mut(&ch.id).unwrap();
                match p.on_actor_gone(1.0, ch.old_epoch.as_deref(), ch.new_epoch.as_deref()) {
                    Verdict::Resend(_) => {
                        link.sent(ch.id);
                        got.insert(ch.id.to_string(), json!({"outcome": "resent"}));
                    }
                    Verdict::Done(Err(e)) => {
                        link.finished(ch.id);
                        assert_eq!(e.error.name, "outcome_unknown");
                        got.insert(ch.id.to_string(), json!({"outcome": "outcome_unknown", "detail": to_json(e.error.detail.as_ref().unwrap_or(&Value::Nil))}));
                    }
                    v => panic!("{name}: unexpected {v:?}"),
                }
            }
            for (id, want) in step["expect"].as_object().unwrap() {
                if want["outcome"] == "waiting" {
                    assert!(!got.contains_key(id) && link.in_flight.contains_key(&id.parse().unwrap()), "{name} step {i}: {id} untouched");
                } else {
                    assert_eq!(got.get(id), Some(want), "{name} step {i}: call {id}");
                }
            }
            for id in got.keys() {
                assert!(step["expect"].get(id).is_some(), "{name} step {i}: {id} was touched");
            }
        }
    }
}

#[test]
fn a_pinned_resend_is_the_same_request_with_ep_as_the_reference_encoder_packs_it() {
    // The headers protocol/envelope.py's pin_request makes of these vectors' frames (with
    // generate.py's EP, then pinned again to another epoch): `ep` last, or in its place.
    let cases = [
        ("request_minimal",
         "84a2696401a3736964b1343234322d316632653364346335623661a26f70a87379732e70696e67a26570b035656564306631636530666665653030"),
        ("request_deadline_and_map_args",
         "85a2696402a3736964b1343234322d316632653364346335623661a26f70a97379732e68656c6c6fab646561646c696e655f6d73cf0000019b76daa800a26570b035656564306631636530666665653030"),
        ("request_attachments",
         "84a2696406a3736964b1343234322d316632653364346335623661a26f70a866732e7772697465a26570b035656564306631636530666665653030"),
    ];
    let again = "84a2696401a3736964b1343234322d316632653364346335623661a26f70a87379732e70696e67a26570b030313233343536373839616263646566";
    let doc = load("protocol/vectors/envelope.json");
    for (name, want) in cases {
        let v = doc["vectors"].as_array().unwrap().iter().find(|v| v["name"] == name).unwrap();
        let frames: Vec<Vec<u8>> = v["frames"].as_array().unwrap().iter().map(|f| unhex(f.as_str().unwrap())).collect();
        let pinned = envelope::pin_request(&frames, "5eed0f1ce0ffee00").unwrap();
        assert_eq!(hex(&pinned[1]), want, "{name}");
        assert_eq!((&pinned[0], &pinned[2..]), (&frames[0], &frames[2..]), "{name}: all but the header as it was");
        let (first, resent) = (envelope::decode_request(&frames).unwrap(), envelope::decode_request(&pinned).unwrap());
        assert_eq!(resent.epoch.as_deref(), Some("5eed0f1ce0ffee00"));
        assert_eq!(envelope::Request { epoch: None, ..resent }, first, "{name}: the same request");
        if name == "request_minimal" {
            assert_eq!(hex(&envelope::pin_request(&pinned, "0123456789abcdef").unwrap()[1]), again);
        }
    }
    let mut bad = envelope::encode_request(9, "s", "fake.held", &[0xc0], None, &[]);
    bad[1] = moorage_client::codec::encode(&moorage_client::args([("id", Value::from(9)), ("sid", Value::from("s")),
                                                                   ("op", Value::from("x")), ("ep", Value::from(5))]));
    assert_eq!(envelope::decode_request(&bad).unwrap_err().error.message, "ep must be a string");
}

#[test]
fn the_codec_refuses_what_section_15_refuses() {
    use moorage_client::codec::decode;
    assert!(decode(&[0x81, 0x01, 0xa1, b'x']).is_err(), "int key");
    assert!(decode(&[0xd6, 0xff, 0, 0, 0, 1]).is_err(), "timestamp");
    assert!(decode(&[0xa2, 0xff, 0xfe]).is_err(), "invalid utf-8");
    assert!(decode(&[0xdd, 0xff, 0xff, 0xff, 0xff]).is_err(), "length past the end");
    assert!(decode(&[0xc0, 0xc0]).is_err(), "trailing bytes");
    let mut deep = vec![0x91u8; 33];
    deep.push(0x01);
    assert!(decode(&deep).is_err(), "depth 33");
    assert!(decode(&deep[1..]).is_ok(), "depth 32");
}

#[test]
fn typed_args_encode_as_maps_the_strict_reader_takes() {
    #[derive(serde::Serialize)]
    struct Exec<'a> {
        session: &'a str,
        command: &'a str,
        timeout_ms: Option<u64>,
    }
    let bytes = rmp_serde::to_vec_named(&Exec { session: "t1", command: "make", timeout_ms: None }).unwrap();
    let v = moorage_client::codec::decode(&bytes).unwrap();
    assert_eq!(to_json(&v), json!({"session": "t1", "command": "make", "timeout_ms": null}));
}

#[test]
fn every_deadline_vector() {
    use moorage_client::calls::{call_timeout, declared_timeouts};
    let doc = load("protocol/vectors/client.json");
    for v in doc["deadlines"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap();
        let op = v["op"].as_str().unwrap();
        let declared = if v["ops"].is_null() {
            None
        } else {
            declared_timeouts(&to_wire(&json!({"ops": v["ops"]}))).get(op).copied()
        };
        let timeout = v["timeout"].as_f64().unwrap_or_else(|| call_timeout(declared, v["client_timeout"].as_f64().unwrap()));
        assert!((timeout - v["expect_s"].as_f64().unwrap()).abs() < 1e-9, "{name}: {timeout} s");
    }
}

#[test]
fn every_refusal_vector() {
    use moorage_client::recovery::max_retries_for;
    let doc = load("protocol/vectors/client.json");
    let settings = PlanSettings { timeout: 10.0, attempt_timeout: 1.0, backoff: Backoff::default(), remote: false };
    for v in doc["refusals"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap();
        let args = to_wire(&json!({"session": "s1"}));
        let mut p = CallPlan::new(1, "4242-1f2e3d4c5b6a", "terminal", v["op"].as_str().unwrap(), &args,
                                  moorage_client::codec::encode(&args), v["idempotent"].as_bool().unwrap(), settings, None, &[], 0.0);
        let mut br = CircuitBreaker::new(5, 0.5);
        p.start(0.0, &mut br, Some("aaaaaaaaaaaaaaaa"));
        let err = WireError::of(v["error"].as_str().unwrap(), "refused");
        let reply = envelope::decode_reply(&envelope::encode_error(Some(1), "aaaaaaaaaaaaaaaa", &err)).unwrap();
        let verdict = p.on_reply(reply, 0.0, &mut br, 0.5);
        let renew = p.renewing;
        if renew {
            p.renew(2, "4242-1f2e3d4c5b6a", Some("aaaaaaaaaaaaaaaa"));
            let sent = envelope::decode_request(&p.frames).unwrap();
            assert_eq!((sent.id, sent.deadline_ms), (2, Some(p.deadline_ms)), "{name}: a new id, the same deadline");
            assert_eq!(to_json(&sent.args), json!({"session": "s1"}), "{name}: the same body");
        }
        let got = json!({"resend": matches!(verdict, Verdict::Resend(_)), "new_id": renew, "budget": max_retries_for(&err)});
        assert_eq!(got, v["expect"], "{name}");
    }
}
