//! A Run's output on its way to the control plane: gathered into fewer,
//! larger chunks, cut into pieces that fit a RunService message, numbered.

use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;

/// The most output one message carries, bytes: a larger chunk goes in
/// pieces of at most this size, cut between characters. (A terminal report
/// carries one such piece besides the result; see [`super::MAX_RESULT_BYTES`].)
pub const MAX_OUTPUT_CHUNK_BYTES: usize = 1 << 20;

/// Output chunks waiting together are sent as one, up to this size.
const COALESCE_BYTES: usize = 64 * 1024;

/// How long output waits for more before it is sent: a Run that ends
/// within it sends its output with its terminal report, in one message
/// that the control plane stores in one write.
const OUTPUT_LINGER: Duration = Duration::from_millis(2);

/// Reads what a Run emits from `emitted` until its sink is gone, and hands
/// each piece to `send` with its seq, numbered 1, 2, 3, … without gaps.
/// Chunks emitted within [`OUTPUT_LINGER`] of each other travel as one
/// (chunk boundaries carry no meaning, messages cost); none is larger than
/// [`MAX_OUTPUT_CHUNK_BYTES`]; empty ones get no number and are not sent
/// (the control plane stores nothing for them, so each would leave a gap in
/// the Run's seqs, and a Run with too many gaps gets its end refused).
///
/// Returns the last seq, and the last piece if the Run ended while it
/// waited: that one rides with the terminal report instead of `send`.
pub(super) async fn forward(
    mut emitted: UnboundedReceiver<String>,
    mut send: impl FnMut(u64, String),
) -> (u64, Option<(u64, String)>) {
    let mut seq = 0u64;
    while let Some(mut data) = emitted.recv().await {
        let until = tokio::time::Instant::now() + OUTPUT_LINGER;
        let mut ended = false;
        while data.len() < COALESCE_BYTES {
            match tokio::time::timeout_at(until, emitted.recv()).await {
                Ok(Some(more)) => data.push_str(&more),
                Ok(None) => {
                    ended = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let mut pieces = pieces(&data, MAX_OUTPUT_CHUNK_BYTES).peekable();
        while let Some(piece) = pieces.next() {
            seq += 1;
            if ended && pieces.peek().is_none() {
                return (seq, Some((seq, piece.to_owned())));
            }
            send(seq, piece.to_owned());
        }
        if ended {
            break;
        }
    }
    (seq, None)
}

/// `data` cut into pieces of at most `max` bytes (`max` ≥ 4), each ending
/// on a character boundary; none for empty `data`.
fn pieces(data: &str, max: usize) -> impl Iterator<Item = &str> {
    let mut rest = data;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut end = rest.len().min(max);
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        let (piece, tail) = rest.split_at(end);
        rest = tail;
        Some(piece)
    })
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::*;

    /// Feeds `chunks` to [`forward`], each after a pause longer than the
    /// linger (so that none is coalesced with the next), and returns every
    /// (seq, piece) it produced, whether sent or held for the terminal
    /// report, and the last seq.
    async fn forwarded(chunks: Vec<String>) -> (Vec<(u64, String)>, u64) {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut sent = Vec::new();
        let forwarding = forward(rx, |seq, data| sent.push((seq, data)));
        let feeding = async move {
            for chunk in chunks {
                tx.send(chunk).expect("forwarder alive");
                tokio::time::sleep(OUTPUT_LINGER * 5).await;
            }
        };
        let ((last, trailing), ()) = tokio::join!(forwarding, feeding);
        sent.extend(trailing);
        (sent, last)
    }

    fn strings(chunks: &[&str]) -> Vec<String> {
        chunks.iter().map(|c| (*c).to_owned()).collect()
    }

    #[tokio::test]
    async fn empty_chunks_get_no_number() {
        let (sent, last) = forwarded(strings(&["", "a", "", "", "b", ""])).await;
        assert_eq!(sent, [(1, "a".to_owned()), (2, "b".to_owned())]);
        assert_eq!(last, 2);

        // Only empty chunks: nothing numbered, nothing sent or held.
        let (sent, last) = forwarded(strings(&["", "", ""])).await;
        assert_eq!((sent, last), (vec![], 0));

        // Ending right after an empty chunk holds nothing for the terminal report.
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(String::new()).expect("send");
        drop(tx);
        assert_eq!(forward(rx, |seq, data| panic!("sent {seq}: {data:?}")).await, (0, None));
    }

    #[tokio::test]
    async fn a_chunk_too_large_for_one_message_goes_in_pieces() {
        // Three-byte characters: a cut every MAX_OUTPUT_CHUNK_BYTES would
        // fall inside one.
        let big = "€".repeat(MAX_OUTPUT_CHUNK_BYTES);
        let (sent, last) = forwarded(vec!["a".to_owned(), big.clone(), "z".to_owned()]).await;
        let seqs: Vec<u64> = sent.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(seqs, (1..=last).collect::<Vec<_>>());
        assert_eq!(last, 1 + 4 + 1, "a, four pieces of the big chunk, z");
        assert!(sent.iter().all(|(_, data)| data.len() <= MAX_OUTPUT_CHUNK_BYTES && !data.is_empty()));
        let whole: String = sent.into_iter().map(|(_, data)| data).collect();
        assert_eq!(whole, format!("a{big}z"));
    }

    #[test]
    fn pieces_end_on_character_boundaries() {
        fn collect(data: &str, max: usize) -> Vec<&str> {
            pieces(data, max).collect()
        }
        assert_eq!(collect("", 4), Vec::<&str>::new());
        assert_eq!(collect("abcdefghij", 4), ["abcd", "efgh", "ij"]);
        assert_eq!(collect("ab€cd", 4), ["ab", "€c", "d"]);
        assert_eq!(collect("😀😀", 4), ["😀", "😀"]);
    }
}
