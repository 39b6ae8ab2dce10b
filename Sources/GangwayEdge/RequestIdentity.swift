import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Request ids and W3C trace context for the hop from the edge to a worker.
enum RequestIdentity {
    /// The client's id when it is 1...128 visible ASCII characters, otherwise a new one.
    static func requestID(from header: String?, random: RandomPool = .shared) -> String {
        if let header, !header.isEmpty, header.utf8.count <= 128, header.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f }) {
            return header
        }
        let (a, b) = random.next2()
        return hex(a, b)
    }

    /// Continues the client's trace with a new span id, or starts one.
    ///
    /// A trace is continued when the header is a version-00 `traceparent` as W3C Trace Context
    /// writes it, `00-<trace id>-<parent id>-<flags>`: 55 bytes, lowercase hex fields, a trace
    /// id and parent id that are not all zeros. Anything else starts a new trace. Built byte by
    /// byte into one string: the edge makes one per request.
    static func traceparent(from header: String?, random: RandomPool = .shared) -> String {
        if var header, header.utf8.count == 55 {
            let continued: String? = header.withUTF8 { bytes in
                guard isTraceparent(bytes) else { return nil }
                return traceparent { out in
                    for i in 3..<35 { out[i] = bytes[i] }
                    writeHex(random.nonZero(), into: out, at: 36)
                    out[53] = bytes[53]
                    out[54] = bytes[54]
                }
            }
            if let continued { return continued }
        }
        var (high, low) = random.next2()
        if high == 0 && low == 0 { low = 1 }  // an all-zero trace id is invalid
        return traceparent { out in
            writeHex(high, into: out, at: 3)
            writeHex(low, into: out, at: 19)
            writeHex(random.nonZero(), into: out, at: 36)
            out[53] = UInt8(ascii: "0")
            out[54] = UInt8(ascii: "1")
        }
    }

    /// A version-00 `traceparent`, 55 bytes: `00-` and the dashes are written here; `fill`
    /// writes the trace id (3..<35), span id (36..<52) and flags (53, 54).
    private static func traceparent(_ fill: (UnsafeMutableBufferPointer<UInt8>) -> Void) -> String {
        String(unsafeUninitializedCapacity: 55) { out in
            out[0] = UInt8(ascii: "0")
            out[1] = UInt8(ascii: "0")
            out[2] = UInt8(ascii: "-")
            out[35] = UInt8(ascii: "-")
            out[52] = UInt8(ascii: "-")
            fill(out)
            return 55
        }
    }

    /// Whether 55 bytes are a `traceparent` this edge continues (see ``traceparent(from:random:)``).
    private static func isTraceparent(_ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        guard bytes.count == 55, bytes[0] == UInt8(ascii: "0"), bytes[1] == UInt8(ascii: "0"),
            bytes[2] == UInt8(ascii: "-"), bytes[35] == UInt8(ascii: "-"), bytes[52] == UInt8(ascii: "-")
        else { return false }
        var traceBits: UInt8 = 0
        var parentBits: UInt8 = 0
        for i in 3..<35 {
            guard isHex(bytes[i]) else { return false }
            traceBits |= bytes[i] ^ UInt8(ascii: "0")
        }
        for i in 36..<52 {
            guard isHex(bytes[i]) else { return false }
            parentBits |= bytes[i] ^ UInt8(ascii: "0")
        }
        return traceBits != 0 && parentBits != 0 && isHex(bytes[53]) && isHex(bytes[54])
    }

    /// 16 lowercase hex digits.
    static func hex(_ value: UInt64) -> String {
        String(unsafeUninitializedCapacity: 16) { out in
            writeHex(value, into: out, at: 0)
            return 16
        }
    }

    /// 32 lowercase hex digits: `high`, then `low`.
    static func hex(_ high: UInt64, _ low: UInt64) -> String {
        String(unsafeUninitializedCapacity: 32) { out in
            writeHex(high, into: out, at: 0)
            writeHex(low, into: out, at: 16)
            return 32
        }
    }

    private static func writeHex(_ value: UInt64, into out: UnsafeMutableBufferPointer<UInt8>, at start: Int) {
        let digits: StaticString = "0123456789abcdef"
        digits.withUTF8Buffer { digits in
            for i in 0..<16 {
                out[start + i] = digits[Int(value >> UInt64(60 - 4 * i) & 0xf)]
            }
        }
    }

    private static func isHex(_ c: UInt8) -> Bool {
        (48...57).contains(c) || (97...102).contains(c)
    }
}

/// Random numbers for ids, read from the kernel a few KiB at a time.
///
/// Every request needs up to five 64-bit random numbers (request id, trace id, span id), and
/// the standard generator makes a `getrandom(2)` call for each: a measurable share of the
/// edge's time per request. The pool draws the same kernel randomness in bulk and hands it
/// out under a short lock. Ids are not secrets; nothing here is used as a key.
final class RandomPool: Sendable {
    static let shared = RandomPool()

    private struct State {
        var words: [UInt64]
        var next: Int
    }

    private let state: Mutex<State>
    private let size: Int

    /// - Parameter words: 64-bit numbers drawn per refill.
    init(words: Int = 512) {
        size = max(2, words)
        state = Mutex(State(words: [], next: 0))
    }

    func next() -> UInt64 {
        take(1).0
    }

    /// Two numbers under one lock.
    func next2() -> (UInt64, UInt64) {
        take(2)
    }

    /// A number other than zero, as a span id must be.
    func nonZero() -> UInt64 {
        while true {
            let value = next()
            if value != 0 { return value }
        }
    }

    private func take(_ count: Int) -> (UInt64, UInt64) {
        state.withLock { s in
            if s.next + count > s.words.count {
                s.words = Self.draw(size)
                s.next = 0
            }
            defer { s.next += count }
            return (s.words[s.next], count > 1 ? s.words[s.next + 1] : 0)
        }
    }

    private static func draw(_ count: Int) -> [UInt64] {
        var words = [UInt64](repeating: 0, count: count)
        #if canImport(Glibc) || canImport(Darwin)
        // glibc 2.36+ and Darwin: one getrandom(2) (or its equivalent) for the whole buffer.
        words.withUnsafeMutableBytes { arc4random_buf($0.baseAddress!, $0.count) }
        #else
        var generator = SystemRandomNumberGenerator()
        for i in words.indices { words[i] = generator.next() }
        #endif
        return words
    }
}
