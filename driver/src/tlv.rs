//! TLV encodings of ISO/IEC 7816-4 §5.2: SIMPLE-TLV (the card's records, card profile
//! §3) and BER-TLV (FCI templates).

/// Why bytes are not TLV.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TlvError {
    #[error("TLV truncated: {0}")]
    Truncated(&'static str),
    #[error("invalid SIMPLE-TLV tag {0:02X} (00 and FF are not tags)")]
    BadTag(u8),
    #[error("BER-TLV length form not supported: {0:02X}")]
    BadLength(u8),
    #[error("BER-TLV nested deeper than {0}")]
    TooDeep(usize),
    #[error("value of {0} bytes is too long to encode")]
    TooLong(usize),
}

/// A SIMPLE-TLV data object: 1-byte tag (01–FE), length 00–FE or FF + 2 bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimpleTlv {
    pub tag: u8,
    pub value: Vec<u8>,
}

impl SimpleTlv {
    pub fn new(tag: u8, value: impl Into<Vec<u8>>) -> Self {
        SimpleTlv {
            tag,
            value: value.into(),
        }
    }

    /// Parse one object; returns it and the bytes after it.
    pub fn parse_one(b: &[u8]) -> Result<(SimpleTlv, &[u8]), TlvError> {
        let (&tag, rest) = b.split_first().ok_or(TlvError::Truncated("tag"))?;
        if tag == 0x00 || tag == 0xFF {
            return Err(TlvError::BadTag(tag));
        }
        let (&l, rest) = rest.split_first().ok_or(TlvError::Truncated("length"))?;
        let (len, rest) = if l == 0xFF {
            if rest.len() < 2 {
                return Err(TlvError::Truncated("length"));
            }
            (u16::from_be_bytes([rest[0], rest[1]]) as usize, &rest[2..])
        } else {
            (l as usize, rest)
        };
        if rest.len() < len {
            return Err(TlvError::Truncated("value"));
        }
        Ok((SimpleTlv::new(tag, &rest[..len]), &rest[len..]))
    }

    /// Parse a whole sequence of objects.
    pub fn parse_all(mut b: &[u8]) -> Result<Vec<SimpleTlv>, TlvError> {
        let mut v = Vec::new();
        while !b.is_empty() {
            let (t, rest) = Self::parse_one(b)?;
            v.push(t);
            b = rest;
        }
        Ok(v)
    }

    /// Parse exactly one object with nothing after it (a record).
    pub fn parse_exact(b: &[u8]) -> Result<SimpleTlv, TlvError> {
        match Self::parse_one(b)? {
            (t, []) => Ok(t),
            (_, _) => Err(TlvError::Truncated("bytes after the object")),
        }
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>, TlvError> {
        if self.tag == 0 || self.tag == 0xFF {
            return Err(TlvError::BadTag(self.tag));
        }
        let n = self.value.len();
        let mut out = vec![self.tag];
        match n {
            0..=0xFE => out.push(n as u8),
            0xFF..=0xFFFF => {
                out.push(0xFF);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            _ => return Err(TlvError::TooLong(n)),
        }
        out.extend_from_slice(&self.value);
        Ok(out)
    }
}

/// Find the first object with `tag` in a SIMPLE-TLV sequence.
pub fn find_simple(objects: &[SimpleTlv], tag: u8) -> Option<&SimpleTlv> {
    objects.iter().find(|o| o.tag == tag)
}

/// A BER-TLV data object: tag (1–3 bytes, kept as a number), and either a primitive
/// value or constructed children.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BerTlv {
    pub tag: u32,
    pub value: BerValue,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BerValue {
    Primitive(Vec<u8>),
    Constructed(Vec<BerTlv>),
}

/// How deep constructed objects may nest.
pub const MAX_DEPTH: usize = 16;

fn parse_tag(b: &[u8]) -> Result<(u32, bool, &[u8]), TlvError> {
    let (&first, mut rest) = b.split_first().ok_or(TlvError::Truncated("tag"))?;
    let constructed = first & 0x20 != 0;
    let mut tag = first as u32;
    if first & 0x1F == 0x1F {
        for i in 0..2 {
            let (&x, r) = rest.split_first().ok_or(TlvError::Truncated("tag"))?;
            rest = r;
            tag = (tag << 8) | x as u32;
            if x & 0x80 == 0 {
                break;
            }
            if i == 1 {
                return Err(TlvError::Truncated("tag longer than 3 bytes"));
            }
        }
    }
    Ok((tag, constructed, rest))
}

fn parse_len(b: &[u8]) -> Result<(usize, &[u8]), TlvError> {
    let (&l, rest) = b.split_first().ok_or(TlvError::Truncated("length"))?;
    match l {
        0x00..=0x7F => Ok((l as usize, rest)),
        0x81..=0x84 => {
            let n = (l & 0x7F) as usize;
            if rest.len() < n {
                return Err(TlvError::Truncated("length"));
            }
            let len = rest[..n].iter().fold(0usize, |a, x| (a << 8) | *x as usize);
            Ok((len, &rest[n..]))
        }
        _ => Err(TlvError::BadLength(l)),
    }
}

fn tag_bytes(tag: u32) -> Vec<u8> {
    match tag {
        0..=0xFF => vec![tag as u8],
        0x100..=0xFFFF => (tag as u16).to_be_bytes().to_vec(),
        _ => tag.to_be_bytes()[1..].to_vec(),
    }
}

fn len_bytes(n: usize) -> Vec<u8> {
    match n {
        0..=0x7F => vec![n as u8],
        0x80..=0xFF => vec![0x81, n as u8],
        0x100..=0xFFFF => {
            let mut v = vec![0x82];
            v.extend_from_slice(&(n as u16).to_be_bytes());
            v
        }
        _ => {
            let mut v = vec![0x84];
            v.extend_from_slice(&(n as u32).to_be_bytes());
            v
        }
    }
}

impl BerTlv {
    /// Parse one object (recursing into constructed ones); returns it and the rest.
    pub fn parse_one(b: &[u8]) -> Result<(BerTlv, &[u8]), TlvError> {
        Self::parse_depth(b, 0)
    }

    fn parse_depth(b: &[u8], depth: usize) -> Result<(BerTlv, &[u8]), TlvError> {
        if depth > MAX_DEPTH {
            return Err(TlvError::TooDeep(MAX_DEPTH));
        }
        let (tag, constructed, rest) = parse_tag(b)?;
        let (len, rest) = parse_len(rest)?;
        if rest.len() < len {
            return Err(TlvError::Truncated("value"));
        }
        let (body, after) = rest.split_at(len);
        let value = if constructed {
            let mut kids = Vec::new();
            let mut cur = body;
            while !cur.is_empty() {
                let (k, r) = Self::parse_depth(cur, depth + 1)?;
                kids.push(k);
                cur = r;
            }
            BerValue::Constructed(kids)
        } else {
            BerValue::Primitive(body.to_vec())
        };
        Ok((BerTlv { tag, value }, after))
    }

    /// Parse a sequence of objects.
    pub fn parse_all(mut b: &[u8]) -> Result<Vec<BerTlv>, TlvError> {
        let mut v = Vec::new();
        while !b.is_empty() {
            let (t, r) = Self::parse_one(b)?;
            v.push(t);
            b = r;
        }
        Ok(v)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let body = match &self.value {
            BerValue::Primitive(v) => v.clone(),
            BerValue::Constructed(kids) => kids.iter().flat_map(|k| k.to_bytes()).collect(),
        };
        let mut out = tag_bytes(self.tag);
        out.extend(len_bytes(body.len()));
        out.extend(body);
        out
    }

    /// Follow a path of tags through constructed objects, e.g. `[0x6F, 0x84]`.
    pub fn find(&self, path: &[u32]) -> Option<&BerTlv> {
        let (first, rest) = path.split_first()?;
        if *first != self.tag {
            return None;
        }
        if rest.is_empty() {
            return Some(self);
        }
        match &self.value {
            BerValue::Constructed(kids) => kids.iter().find_map(|k| k.find(rest)),
            BerValue::Primitive(_) => None,
        }
    }

    /// The primitive value, if primitive.
    pub fn bytes(&self) -> Option<&[u8]> {
        match &self.value {
            BerValue::Primitive(v) => Some(v),
            BerValue::Constructed(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).unwrap()
    }

    #[test]
    fn simple_tlv_records() {
        let t = SimpleTlv::parse_exact(&h("0709 413635303230303031")).unwrap();
        assert_eq!((t.tag, t.value.as_slice()), (0x07, &b"A65020001"[..]));
        let all = SimpleTlv::parse_all(&h("0201 31 0304 332E3030")).unwrap();
        assert_eq!(find_simple(&all, 0x03).unwrap().value, b"3.00");
        let long = SimpleTlv::new(0x10, vec![7; 300]);
        let b = long.to_bytes().unwrap();
        assert_eq!(&b[..4], &[0x10, 0xFF, 0x01, 0x2C]);
        assert_eq!(SimpleTlv::parse_exact(&b).unwrap(), long);
        assert_eq!(
            SimpleTlv::parse_one(&h("00 01 02")),
            Err(TlvError::BadTag(0))
        );
        assert!(matches!(
            SimpleTlv::parse_exact(&h("0705 41")),
            Err(TlvError::Truncated(_))
        ));
        assert!(SimpleTlv::parse_exact(&h("0701 41 42")).is_err());
    }

    #[test]
    fn ber_fci() {
        let fci = h("6F 17 84 0F 7378312E73682EC9E7BBE1B1A3D5CF A5 04 9F08 01 01");
        let (t, rest) = BerTlv::parse_one(&fci).unwrap();
        assert!(rest.is_empty());
        assert_eq!(t.find(&[0x6F, 0x84]).unwrap().bytes().unwrap().len(), 15);
        assert_eq!(
            t.find(&[0x6F, 0xA5, 0x9F08]).unwrap().bytes(),
            Some(&[1u8][..])
        );
        assert_eq!(t.to_bytes(), fci);
        assert!(matches!(
            BerTlv::parse_one(&h("6F 05 84 03")),
            Err(TlvError::Truncated(_))
        ));
        assert_eq!(
            BerTlv::parse_one(&h("04 85 00")),
            Err(TlvError::BadLength(0x85))
        );
        let deep: Vec<u8> = std::iter::repeat_n([0x30u8, 0x02], 40).flatten().collect();
        assert!(BerTlv::parse_one(&deep).is_err());
    }
}
