//! Whatever bytes reach the agent, it must not panic, must answer every
//! non-blank line with exactly one response, and garbage gets errors.

use std::io::Cursor;

use netmem_agent::protocol::{AgentMessage, Event, Response};
use netmem_agent::server::{ServerConfig, serve_streams_with};
use proptest::prelude::*;

fn serve(input: Vec<u8>) -> Vec<AgentMessage> {
    let cfg = ServerConfig::for_tests("/nonexistent-root");
    let mut out = Vec::new();
    serve_streams_with(Cursor::new(input), &mut out, &cfg).expect("in-memory streams never fail");
    let text = String::from_utf8(out).expect("the agent writes UTF-8");
    text.lines()
        .map(|l| {
            AgentMessage::from_line(l).unwrap_or_else(|e| panic!("unparsable frame {l:?}: {e}"))
        })
        .collect()
}

/// Lines that look more or less like requests; the valid ones among them
/// are only `hello` and `ping` (unknown fields are ignored), nothing runs or shuts down.
fn near_miss() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200),
        "[ -~]{0,80}".prop_map(String::into_bytes),
        (
            any::<u64>(),
            "(hello|ping|pong|run|fly|read_file|write_file|)"
        )
            .prop_map(|(id, k)| {
                // `run` without argv, read_file without path, write_file without contents: all invalid.
                format!(r#"{{"id":{id},"op":{{"kind":"{k}","bogus":1}}}}"#).into_bytes()
            }),
        any::<u64>().prop_map(|id| format!(r#"{{"id":{id},"op":{{"kind":"ping"}}}}"#).into_bytes()),
        "\\{\"id\":[0-9a-z\"-]{0,5},\"op\":\\{[ -~]{0,20}\\}\\}".prop_map(String::into_bytes),
    ]
}

fn count_nonblank(lines: &[Vec<u8>]) -> usize {
    lines
        .iter()
        .flat_map(|l| l.split(|&b| b == b'\n'))
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .count()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let msgs = serve(bytes.clone());
        let ready = matches!(msgs[0], AgentMessage::Event(Event::Ready { .. }));
        prop_assert!(ready);
        let lines: Vec<Vec<u8>> = vec![bytes];
        prop_assert_eq!(msgs.len() - 1, count_nonblank(&lines));
        for m in &msgs[1..] {
            let is_err = matches!(m, AgentMessage::Response(Response { result: Err(_), .. }));
            prop_assert!(is_err, "{:?}", m);
        }
    }

    #[test]
    fn every_line_gets_one_response(lines in proptest::collection::vec(near_miss(), 0..20)) {
        let mut input = Vec::new();
        for l in &lines {
            input.extend_from_slice(l);
            input.push(b'\n');
        }
        let msgs = serve(input);
        prop_assert_eq!(msgs.len() - 1, count_nonblank(&lines));
        for m in &msgs[1..] {
            let AgentMessage::Response(r) = m else { panic!("unexpected event {m:?}") };
            if let Ok(reply) = &r.result {
                prop_assert!(["pong", "hello"].contains(&reply.name()), "{:?}", reply);
            }
        }
    }
}
