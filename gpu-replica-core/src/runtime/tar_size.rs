//! Counts the file bytes in a tar stream without unpacking it: how a volume's usage is measured
//! through the archive API, which every Docker engine serves (the `/system/df` shape changed
//! between API versions).

/// Feeds tar bytes in chunks of any size and sums the sizes of regular files.
#[derive(Debug, Default)]
pub struct TarSizeCounter {
    header: Vec<u8>,
    skip: u64,
    total: u64,
}

const BLOCK: u64 = 512;

impl TarSizeCounter {
    /// Consumes the next chunk of the stream.
    pub fn feed(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(chunk.len() as u64);
                self.skip -= n;
                chunk = &chunk[n as usize..];
                continue;
            }
            let need = BLOCK as usize - self.header.len();
            let take = need.min(chunk.len());
            self.header.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            if self.header.len() == BLOCK as usize {
                self.on_header();
                self.header.clear();
            }
        }
    }

    fn on_header(&mut self) {
        let header = &self.header;
        if header.iter().all(|&b| b == 0) {
            return;
        }
        let size = parse_size(&header[124..136]);
        // Regular files are type '0' or NUL; others (links, dirs, long names) carry no file data.
        if header[156] == b'0' || header[156] == 0 {
            self.total += size;
        }
        self.skip = size.div_ceil(BLOCK) * BLOCK;
    }

    /// File bytes seen so far.
    pub fn total(&self) -> u64 {
        self.total
    }
}

/// Octal, or base-256 when the high bit of the first byte is set (files over 8 GiB).
fn parse_size(field: &[u8]) -> u64 {
    if field[0] & 0x80 != 0 {
        return field[1..]
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    }
    field
        .iter()
        .filter(|b| (b'0'..=b'7').contains(b))
        .fold(0u64, |acc, &b| acc * 8 + u64::from(b - b'0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_file_bytes_whatever_the_chunking() {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, len) in [("a", 10usize), ("dir/b", 1000), ("c", 0)] {
            let mut header = tar::Header::new_gnu();
            header.set_size(len as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(&mut header, name, vec![7u8; len].as_slice())
                .unwrap();
        }
        let bytes = builder.into_inner().unwrap();
        for chunk in [1, 7, 512, 100_000] {
            let mut counter = TarSizeCounter::default();
            bytes.chunks(chunk).for_each(|c| counter.feed(c));
            assert_eq!(counter.total(), 1010, "chunk size {chunk}");
        }
    }
}
