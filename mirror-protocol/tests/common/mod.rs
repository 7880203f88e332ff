//! Shared test helpers: a seeded xorshift RNG (seed printed, `MP_TEST_SEED` replays it) and
//! random frames of every type.
#![allow(dead_code)]

use bytes::Bytes;
use mirror_protocol::*;

pub struct Rng(u64);

impl Rng {
    /// Seeded from `MP_TEST_SEED` or the clock; prints the seed so a failure can be replayed.
    pub fn from_env(test: &str) -> Rng {
        let seed = std::env::var("MP_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        println!("{test}: MP_TEST_SEED={seed}");
        Rng(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }

    pub fn string(&mut self) -> String {
        const ALPHABET: &[&str] = &["a", "z", "0", "-", ".", "_", "é", "日", "🦀"];
        let len = self.below(12) as usize;
        (0..len)
            .map(|_| ALPHABET[self.below(ALPHABET.len() as u64) as usize])
            .collect()
    }

    pub fn strings(&mut self) -> Vec<String> {
        (0..self.below(4)).map(|_| self.string()).collect()
    }

    pub fn offset(&mut self) -> SourceOffset {
        SourceOffset(self.next() as i64)
    }

    pub fn error_frame(&mut self) -> ErrorFrame {
        let code = if self.below(2) == 0 {
            ErrorCode::from_u16(1 + self.below(9) as u16)
        } else {
            ErrorCode::from_u16(self.next() as u16)
        };
        ErrorFrame {
            code,
            message: self.string(),
        }
    }

    pub fn data_entry(&mut self) -> DataEntry {
        let len = self.below(300) as usize;
        // Half the time compressible, half random.
        let batches = if self.below(2) == 0 {
            vec![b'x'; len]
        } else {
            self.bytes(len)
        };
        DataEntry {
            topic: self.string(),
            partition: self.next() as i32,
            source_log_start: self.offset(),
            source_high_watermark: self.offset(),
            batches: Bytes::from(batches),
        }
    }

    /// A topic id half the time.
    pub fn topic_id(&mut self) -> Option<TopicId> {
        (self.below(2) == 0).then(|| {
            let mut id = [0u8; 16];
            id.copy_from_slice(&self.bytes(16));
            TopicId(id)
        })
    }

    /// A random frame of type `kind % 12`.
    pub fn frame(&mut self, kind: u64) -> Frame {
        match kind % 12 {
            0 => Frame::Hello(Hello {
                min_version: self.next() as u16,
                max_version: self.next() as u16,
                link_name: self.string(),
                cluster_id: self.string(),
                role: if self.below(2) == 0 {
                    Role::Source
                } else {
                    Role::Destination
                },
                capabilities: self.next(),
            }),
            1 => Frame::HelloOk(HelloOk {
                version: self.next() as u16,
                cluster_id: self.string(),
                capabilities: self.next(),
            }),
            2 => Frame::Reject(self.error_frame()),
            3 => Frame::TopicsRequest(TopicsRequest {
                filter: TopicFilter {
                    names: self.strings(),
                    prefixes: self.strings(),
                    regexes: self.strings(),
                },
            }),
            4 => Frame::TopicsReply(TopicsReply {
                topics: (0..self.below(4))
                    .map(|_| TopicInfo {
                        name: self.string(),
                        partitions: self.next() as i32,
                        configs: (0..self.below(3))
                            .map(|_| (self.string(), self.string()))
                            .collect(),
                        topic_id: self.topic_id(),
                    })
                    .collect(),
            }),
            5 => Frame::Subscribe(Subscribe {
                partitions: (0..self.below(4))
                    .map(|_| SubscribePartition {
                        topic: self.string(),
                        partition: self.next() as i32,
                        start: self.offset(),
                        resume: ResumeCheck {
                            source_topic_id: self.topic_id(),
                            last_batch: (self.below(2) == 0).then(|| BatchAnchor {
                                base_offset: self.offset(),
                                last_offset: self.offset(),
                                leader_epoch: self.next() as i32,
                                crc: self.next() as u32,
                            }),
                        },
                    })
                    .collect(),
                options: StreamOptions {
                    zstd_level: self.next() as i32,
                    max_bytes: self.next() as u32,
                    linger_ms: self.next() as u32,
                },
            }),
            6 => Frame::Data(Data {
                entries: (0..self.below(4)).map(|_| self.data_entry()).collect(),
            }),
            7 => Frame::Ack(Ack {
                entries: (0..self.below(4))
                    .map(|_| AckEntry {
                        topic: self.string(),
                        partition: self.next() as i32,
                        durable: self.offset(),
                    })
                    .collect(),
            }),
            8 => Frame::Diverged(Diverged {
                topic: self.string(),
                partition: self.next() as i32,
                kind: [
                    DivergenceKind::TopicRecreated,
                    DivergenceKind::HistoryRewritten,
                    DivergenceKind::SourceTruncated,
                ][self.below(3) as usize],
                mirror_end: self.offset(),
                source_log_start: self.offset(),
                source_log_end: self.offset(),
                message: self.string(),
            }),
            9 => Frame::VerifyRequest(VerifyRequest {
                topic: self.string(),
                partition: self.next() as i32,
                from: self.offset(),
                to: self.offset(),
            }),
            10 => Frame::VerifyReply(VerifyReply {
                source_log_start: self.offset(),
                source_high_watermark: self.offset(),
                batches: (0..self.below(5))
                    .map(|_| BatchDigest {
                        base_offset: self.offset(),
                        last_offset: self.offset(),
                        checksum: self.next() as u32,
                    })
                    .collect(),
            }),
            _ => Frame::Error(self.error_frame()),
        }
    }
}

/// Encodes one frame with default options and limits.
pub fn encode(frame: &Frame) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(
        frame,
        &EncodeOptions::default(),
        &Limits::default(),
        &mut out,
    )
    .unwrap();
    out
}
