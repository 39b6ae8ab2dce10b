import GangwayCore
import NIOCore
import Testing

@Suite("Reordering streamed parts")
struct PartReordererTests {
    @Test("in-order parts pass straight through and the final one finishes the stream")
    func inOrder() throws {
        var r = PartReorderer<String>()
        #expect(try r.accept("a", index: 0, final: false) == ["a"])
        #expect(try r.accept("b", index: 1, final: true) == ["b"])
        #expect(r.isFinished)
    }

    @Test("early parts wait for the missing ones, then come out in order")
    func shuffled() throws {
        var r = PartReorderer<Int>()
        var out: [Int] = []
        for i in [3, 1, 4, 0, 2] {
            out += try r.accept(i, index: i, final: i == 4)
        }
        #expect(out == [0, 1, 2, 3, 4])
        #expect(r.isFinished)
    }

    @Test("a final part that arrives before the others finishes only when they are in")
    func finalFirst() throws {
        var r = PartReorderer<Int>()
        #expect(try r.accept(2, index: 2, final: true).isEmpty)
        #expect(!r.isFinished)
        #expect(try r.accept(0, index: 0, final: false) == [0])
        #expect(try r.accept(1, index: 1, final: false) == [1, 2])
        #expect(r.isFinished)
    }

    @Test("duplicates, parts after the final one, negative numbers and runaway gaps are refused")
    func refusals() throws {
        var r = PartReorderer<Int>(window: 4)
        _ = try r.accept(0, index: 0, final: false)
        #expect(throws: PartReorderer<Int>.Failure.duplicate(0)) { try r.accept(0, index: 0, final: false) }
        #expect(throws: PartReorderer<Int>.Failure.negative(-1)) { try r.accept(0, index: -1, final: false) }
        #expect(throws: PartReorderer<Int>.Failure.windowExceeded(9)) { try r.accept(0, index: 9, final: false) }
        _ = try r.accept(2, index: 2, final: true)
        #expect(throws: PartReorderer<Int>.Failure.afterFinal(3)) { try r.accept(0, index: 3, final: false) }
    }
}

@Suite("Server-Sent Events encoding")
struct SSEEncoderTests {
    func text(_ b: ByteBuffer) -> String { String(buffer: b) }

    @Test("id, event and data fields; one blank line ends the event")
    func fields() {
        #expect(text(SSEEncoder.event(id: "7", name: "progress", data: #"{"p":1}"#)) == "id: 7\nevent: progress\ndata: {\"p\":1}\n\n")
        #expect(text(SSEEncoder.event(data: "")) == "data: \n\n")
    }

    @Test("every line ending in the data starts a new data field: LF, CR and CRLF alike")
    func multiLine() {
        #expect(text(SSEEncoder.event(data: "a\nb\rc\r\nd")) == "data: a\ndata: b\ndata: c\ndata: d\n\n")
        #expect(text(SSEEncoder.event(data: "end\n")) == "data: end\ndata: \n\n")
    }

    @Test("UTF-8 passes through untouched")
    func utf8() {
        #expect(text(SSEEncoder.event(id: "1", data: "héllo 🚀 — ✓")) == "id: 1\ndata: héllo 🚀 — ✓\n\n")
    }

    @Test("a round trip through a minimal SSE parser gives back the data")
    func roundTrip() {
        for data in ["plain", "two\nlines", "crlf\r\nline", "", "ünïcödé\n\n"] {
            let wire = text(SSEEncoder.event(id: "3", data: data))
            var lines: [String] = []
            var id: String?
            for line in wire.split(separator: "\n", omittingEmptySubsequences: false) {
                if line.hasPrefix("data: ") { lines.append(String(line.dropFirst(6))) }
                if line.hasPrefix("id: ") { id = String(line.dropFirst(4)) }
            }
            #expect(id == "3")
            // The parser joins data lines with LF: CR and CRLF come back as LF.
            let normalized = data.replacingOccurrences(of: "\r\n", with: "\n").replacingOccurrences(of: "\r", with: "\n")
            #expect(lines.joined(separator: "\n") == normalized)
        }
    }
}

extension String {
    fileprivate func replacingOccurrences(of target: String, with replacement: String) -> String {
        split(separator: target, omittingEmptySubsequences: false).joined(separator: replacement)
    }
}

@Suite("Stream idle detection")
struct StreamIdleTests {
    @Test("a part that arrives after the sweep read the clock is not an idle gap")
    func partAfterClockRead() {
        #expect(!Correlator.isIdle(lastPart: 1_000_000_500, now: 1_000_000_000, idle: 1_000))
    }

    @Test("a gap of at least the idle timeout is idle; a shorter one is not")
    func gaps() {
        #expect(Correlator.isIdle(lastPart: 0 + 1, now: 1_001, idle: 1_000))
        #expect(!Correlator.isIdle(lastPart: 500, now: 1_000, idle: 1_000))
    }
}
