//! TensorBoard event files written by hand: TFRecord framing around hand-encoded `Event`
//! protobufs. Only the handful of fields TensorBoard needs for scalars are produced, which
//! keeps a protobuf dependency (and its build step) out of the trainer.

use std::io::Write;

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) lookup table, built at compile time.
const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

pub(crate) fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc = CRC32C_TABLE[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// TFRecord masks its CRCs so that a CRC of data that itself contains CRCs stays well mixed.
pub(crate) fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c(data);
    // ((crc >> 15) | (crc << 17)) is a rotation.
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord: length (u64 LE), masked CRC of the length, payload, masked CRC of the payload.
pub(crate) fn write_record(w: &mut impl Write, payload: &[u8]) -> std::io::Result<()> {
    let len = (payload.len() as u64).to_le_bytes();
    let mut buf = Vec::with_capacity(payload.len() + 16);
    buf.extend_from_slice(&len);
    buf.extend_from_slice(&masked_crc(&len).to_le_bytes());
    buf.extend_from_slice(payload);
    buf.extend_from_slice(&masked_crc(payload).to_le_bytes());
    // One write per record, so a killed process leaves at most one torn record at the end
    // (TensorBoard stops reading there and keeps everything before it).
    w.write_all(&buf)
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Field key: (field number << 3) | wire type.
fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, ((field as u64) << 3) | wire as u64);
}

fn bytes_field(out: &mut Vec<u8>, field: u32, data: &[u8]) {
    key(out, field, 2);
    varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

/// `Event` header shared by every record: wall_time = 1 (double), step = 2 (int64).
fn event_header(wall_time: f64, step: i64) -> Vec<u8> {
    let mut ev = Vec::new();
    key(&mut ev, 1, 1);
    ev.extend_from_slice(&wall_time.to_le_bytes());
    key(&mut ev, 2, 0);
    // int64 is varint-encoded as its two's-complement u64 (negative steps take 10 bytes).
    varint(&mut ev, step as u64);
    ev
}

/// The first record of every event file: `file_version: "brain.Event:2"`.
pub(crate) fn file_version_event(wall_time: f64) -> Vec<u8> {
    let mut ev = event_header(wall_time, 0);
    bytes_field(&mut ev, 3, b"brain.Event:2");
    ev
}

/// `session_log { status: START }` at `step`: TensorBoard drops every earlier-written point
/// with step >= `step` when it meets this, which is how a resumed run hides the steps the
/// crashed run logged after its last checkpoint.
pub(crate) fn session_start_event(wall_time: f64, step: i64) -> Vec<u8> {
    let mut ev = event_header(wall_time, step);
    // Event.session_log = 7 (6 is the deprecated log_message): SessionLog { status = 1: START = 1 }
    bytes_field(&mut ev, 7, &[0x08, 0x01]);
    ev
}

/// `summary { value { tag, simple_value } ... }`; the caller filters out non-finite values.
pub(crate) fn scalars_event<'a>(
    wall_time: f64,
    step: i64,
    values: impl IntoIterator<Item = (&'a str, f32)>,
) -> Vec<u8> {
    let mut summary = Vec::new();
    for (tag, v) in values {
        let mut value = Vec::new();
        bytes_field(&mut value, 1, tag.as_bytes());
        key(&mut value, 2, 5);
        value.extend_from_slice(&v.to_le_bytes());
        bytes_field(&mut summary, 1, &value);
    }
    let mut ev = event_header(wall_time, step);
    bytes_field(&mut ev, 5, &summary);
    ev
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_vectors() {
        // The check value from the CRC catalogue and RFC 3720's 32 zero bytes.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn varints_match_protobuf() {
        let mut v = Vec::new();
        varint(&mut v, 300);
        assert_eq!(v, [0xAC, 0x02]);
        let mut v = Vec::new();
        varint(&mut v, (-1i64) as u64);
        assert_eq!(v.len(), 10);
    }

    #[test]
    fn record_framing_round_trips() {
        let mut out = Vec::new();
        write_record(&mut out, b"hello").unwrap();
        assert_eq!(out.len(), 8 + 4 + 5 + 4);
        assert_eq!(u64::from_le_bytes(out[..8].try_into().unwrap()), 5);
        assert_eq!(
            u32::from_le_bytes(out[8..12].try_into().unwrap()),
            masked_crc(&5u64.to_le_bytes())
        );
        assert_eq!(&out[12..17], b"hello");
        assert_eq!(
            u32::from_le_bytes(out[17..].try_into().unwrap()),
            masked_crc(b"hello")
        );
    }
}
