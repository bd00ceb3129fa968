//! The WebSocket frame scanner: the first byte picks the sender and a split
//! point; scanning the rest whole or in two chunks must find the same frames
//! and the same first error.
#![no_main]
use edge_guard::websocket::frame::{FrameScanner, Sender, SliceSource};
use libfuzzer_sys::fuzz_target;

fn scan(sender: Sender, chunks: &[&[u8]]) -> Vec<String> {
    let mut scanner = FrameScanner::new(sender);
    let mut out = Vec::new();
    for chunk in chunks {
        let mut source = SliceSource(chunk);
        for item in scanner.frames(&mut source) {
            match item {
                Ok(f) => out.push(format!(
                    "{} {} {:?} {} {} {}",
                    f.fin, f.rsv, f.opcode, f.masked, f.payload_len, f.header_len
                )),
                Err(e) => {
                    out.push(format!("error {:?}", e.error));
                    return out;
                }
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let sender = if first & 1 == 0 { Sender::Client } else { Sender::Server };
    let cut = usize::from(first >> 1).min(stream.len());
    let (a, b) = stream.split_at(cut);
    assert_eq!(scan(sender, &[stream]), scan(sender, &[a, b]));
});
