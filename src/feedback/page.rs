//! Pages: many encoded decisions in one sled value, so the log pays sled's per-key cost once
//! per page instead of once per decision.
//!
//! A page is `[PAGE_V1][flags][count: u16 LE]` then, per record, `[key length: u16 LE][key]
//! [record length: u32 LE][record]`, keys ascending. It is stored under its first key. Pages
//! the writer fills ("runs") never overlap another run's key range; a decision whose key falls
//! at or below the last run written (a thread that queued late, a clock that stepped back) is
//! stored alone, flagged `SINGLE`. That is what lets a lookup stop at the first run it meets
//! walking back from a key (see `Store::contains_decision`).

use super::codec::CodecError;

/// First byte of a page.
pub const PAGE_V1: u8 = 0x10;
/// Flag: a page of one record written out of order; it may sit inside a run's range.
const SINGLE: u8 = 1;
/// Most records per page.
pub const PAGE_RECORDS: usize = 28;
/// A page is closed before it passes this many bytes (one larger record gets a page alone).
/// Why so small: a sled leaf holds up to 17 values before it splits, and sled writes any node
/// over a quarter of its 512 KB log segment to a file of its own; 32 KB pages made one such
/// file per few pages written (hundreds a second under load), 7 KB pages keep every leaf in
/// the log. 28 records instead of 128 per sled key measured the same throughput.
pub const PAGE_BYTES: usize = 7 * 1024;
const HEADER: usize = 4;

/// A finished page: its sled key (the first record's key) and value.
pub type Finished = (Vec<u8>, Vec<u8>);

/// Builds one page from records given in ascending key order.
#[derive(Debug)]
pub struct PageBuilder {
    buf: Vec<u8>,
    count: u16,
    first_key: Vec<u8>,
    last_key: Vec<u8>,
}

impl PageBuilder {
    /// An empty page; `single` marks a record stored out of order.
    pub fn new(single: bool) -> Self {
        let mut buf = Vec::with_capacity(PAGE_BYTES / 2);
        buf.extend_from_slice(&[PAGE_V1, if single { SINGLE } else { 0 }, 0, 0]);
        Self {
            buf,
            count: 0,
            first_key: Vec::new(),
            last_key: Vec::new(),
        }
    }

    /// Whether the page has room for a record of `key` and `record` bytes.
    pub fn fits(&self, key: usize, record: usize) -> bool {
        self.count == 0
            || (usize::from(self.count) < PAGE_RECORDS
                && self.buf.len() + 6 + key + record <= PAGE_BYTES)
    }

    /// Adds a record; keys must come in ascending order, each at most 65,535 bytes (decision
    /// keys are, by construction).
    pub fn push(&mut self, key: &[u8], record: &[u8]) {
        if self.count == 0 {
            self.first_key = key.to_vec();
        }
        self.last_key.clear();
        self.last_key.extend_from_slice(key);
        let klen = u16::try_from(key.len()).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&klen.to_le_bytes());
        self.buf.extend_from_slice(&key[..usize::from(klen)]);
        let rlen = u32::try_from(record.len()).unwrap_or(u32::MAX);
        self.buf.extend_from_slice(&rlen.to_le_bytes());
        self.buf.extend_from_slice(record);
        self.count += 1;
    }

    /// Whether the page holds no record.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The last key pushed.
    pub fn last_key(&self) -> &[u8] {
        &self.last_key
    }

    /// The page's sled key (its first record's key) and value.
    pub fn finish(mut self) -> Finished {
        self.buf[2..4].copy_from_slice(&self.count.to_le_bytes());
        (self.first_key, self.buf)
    }
}

/// A page read back, its records borrowed from the value.
#[derive(Debug)]
pub struct Page<'a> {
    single: bool,
    records: Vec<(&'a [u8], &'a [u8])>,
}

impl<'a> Page<'a> {
    /// Parses a page, refusing any length that points past the value before it sizes anything.
    pub fn parse(value: &'a [u8]) -> Result<Self, CodecError> {
        let bad = CodecError::Malformed;
        let (&tag, rest) = value.split_first().ok_or(CodecError::Empty)?;
        if tag != PAGE_V1 {
            return Err(CodecError::Version(tag));
        }
        let (head, mut rest) = rest
            .split_at_checked(HEADER - 1)
            .ok_or(bad("page header"))?;
        let count = usize::from(u16::from_le_bytes([head[1], head[2]]));
        let mut records = Vec::with_capacity(count.min(rest.len() / 6));
        for _ in 0..count {
            let (klen, r) = rest.split_at_checked(2).ok_or(bad("page key length"))?;
            let klen = usize::from(u16::from_le_bytes([klen[0], klen[1]]));
            let (key, r) = r.split_at_checked(klen).ok_or(bad("page key"))?;
            let (rlen, r) = r.split_at_checked(4).ok_or(bad("page record length"))?;
            let rlen = usize::try_from(u32::from_le_bytes([rlen[0], rlen[1], rlen[2], rlen[3]]))
                .map_err(|_| bad("page record length"))?;
            let (record, r) = r.split_at_checked(rlen).ok_or(bad("page record"))?;
            records.push((key, record));
            rest = r;
        }
        if !rest.is_empty() {
            return Err(bad("bytes after a page's last record"));
        }
        Ok(Self {
            single: head[0] & SINGLE != 0,
            records,
        })
    }

    /// Whether this is a record stored alone out of order rather than part of a run.
    pub fn single(&self) -> bool {
        self.single
    }

    /// The records, keys ascending.
    pub fn records(&self) -> &[(&'a [u8], &'a [u8])] {
        &self.records
    }

    /// The record under `key`, if the page holds it.
    pub fn get(&self, key: &[u8]) -> Option<&'a [u8]> {
        self.records
            .binary_search_by(|(k, _)| (*k).cmp(key))
            .ok()
            .map(|i| self.records[i].1)
    }

    /// The page's records as a new page of the same kind, keeping those `keep` accepts; `None`
    /// when none is kept.
    pub fn filtered(
        &self,
        mut keep: impl FnMut(&[u8], &[u8]) -> Result<bool, CodecError>,
    ) -> Result<Option<Finished>, CodecError> {
        let mut b = PageBuilder::new(self.single);
        for (k, r) in &self.records {
            if keep(k, r)? {
                b.push(k, r);
            }
        }
        Ok((!b.is_empty()).then(|| b.finish()))
    }
}

/// Records in a page value, read from its header alone.
pub fn page_len(value: &[u8]) -> Result<usize, CodecError> {
    match value {
        [PAGE_V1, _, lo, hi, ..] => Ok(usize::from(u16::from_le_bytes([*lo, *hi]))),
        [] => Err(CodecError::Empty),
        [tag, ..] if *tag != PAGE_V1 => Err(CodecError::Version(*tag)),
        _ => Err(CodecError::Malformed("page header")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_reads_back_what_was_pushed_and_finds_keys() {
        let mut b = PageBuilder::new(false);
        b.push(b"a", b"one");
        b.push(b"b", b"");
        b.push(b"c", b"three");
        assert_eq!(b.last_key(), b"c");
        let (key, value) = b.finish();
        assert_eq!(key, b"a");
        assert_eq!(page_len(&value).unwrap(), 3);
        let p = Page::parse(&value).unwrap();
        assert!(!p.single());
        assert_eq!(
            p.records(),
            [(&b"a"[..], &b"one"[..]), (b"b", b""), (b"c", b"three")]
        );
        assert_eq!(p.get(b"c"), Some(&b"three"[..]));
        assert_eq!(p.get(b"bb"), None);
        let (k, v) = p.filtered(|k, _| Ok(k != b"a")).unwrap().expect("two kept");
        assert_eq!(k, b"b", "a filtered page is keyed by its new first record");
        assert_eq!(Page::parse(&v).unwrap().records().len(), 2);
        assert!(p.filtered(|_, _| Ok(false)).unwrap().is_none());
    }

    #[test]
    fn pages_close_at_their_record_and_byte_bounds() {
        let mut b = PageBuilder::new(false);
        for i in 0..PAGE_RECORDS {
            assert!(b.fits(2, 10));
            b.push(&u16::try_from(i).unwrap().to_be_bytes(), b"0123456789");
        }
        assert!(!b.fits(2, 10), "full by count");
        let b = PageBuilder::new(true);
        assert!(
            b.fits(2, PAGE_BYTES * 4),
            "an empty page takes any one record"
        );
        let mut b = PageBuilder::new(false);
        b.push(b"k", &[0; PAGE_BYTES / 2]);
        assert!(!b.fits(1, PAGE_BYTES / 2), "full by bytes");
        assert!(Page::parse(&b.finish().1).is_ok());
    }

    #[test]
    fn malformed_pages_are_refused_not_misread() {
        let mut b = PageBuilder::new(true);
        b.push(b"key", b"record");
        let (_, v) = b.finish();
        assert!(Page::parse(&v).unwrap().single());
        for cut in 0..v.len() {
            assert!(Page::parse(&v[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = v.clone();
        longer.push(0);
        assert!(Page::parse(&longer).is_err(), "trailing bytes");
        let mut lying = v.clone();
        lying[2..4].copy_from_slice(&u16::MAX.to_le_bytes());
        assert!(Page::parse(&lying).is_err(), "a count beyond the records");
        let mut huge = v;
        let at = HEADER + 2 + 3;
        huge[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Page::parse(&huge).is_err(), "a record length past the end");
        assert!(matches!(
            Page::parse(&[3, 0, 0, 0]),
            Err(CodecError::Version(3))
        ));
        assert!(page_len(&[]).is_err() && page_len(&[PAGE_V1, 0]).is_err());
    }
}
