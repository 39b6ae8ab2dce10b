/// Topic names and binding patterns as a topic exchange reads them: words separated by dots;
/// in a pattern `*` stands for exactly one word and `#` for zero or more.
///
/// Gangway accepts a stricter alphabet than the broker, so that a topic can sit in a URL path
/// and an SSE field as it is: words of ASCII letters, digits, `_`, `-` and `:`, at most 255
/// bytes in all.
public struct TopicPattern: Hashable, Sendable, CustomStringConvertible {
    public let text: String
    let words: [Substring]

    public static let maxLength = 255

    /// - Returns: nil for an invalid pattern.
    public init?(_ text: String) {
        guard Self.isWellFormed(text, wildcards: true) else { return nil }
        self.text = text
        self.words = text.split(separator: ".", omittingEmptySubsequences: false)
    }

    public var description: String { text }

    /// Whether `topic` is a valid topic name (no wildcards).
    public static func isValidTopic(_ topic: String) -> Bool {
        isWellFormed(topic, wildcards: false)
    }

    static func isWellFormed(_ text: String, wildcards: Bool) -> Bool {
        guard !text.isEmpty, text.utf8.count <= maxLength else { return false }
        for word in text.utf8.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false) {
            guard !word.isEmpty else { return false }
            if wildcards && word.count == 1 && (word.first == UInt8(ascii: "*") || word.first == UInt8(ascii: "#")) { continue }
            for c in word {
                switch c {
                case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                    UInt8(ascii: "_"), UInt8(ascii: "-"), UInt8(ascii: ":"):
                    continue
                default:
                    return false
                }
            }
        }
        return true
    }

    /// Whether a message published with routing key `topic` reaches a binding with this pattern.
    public func matches(_ topic: String) -> Bool {
        let key = topic.split(separator: ".", omittingEmptySubsequences: false)
        // reachable[j]: the first i pattern words can match the first j key words.
        var reachable = [Bool](repeating: false, count: key.count + 1)
        reachable[0] = true
        for word in words {
            var next = [Bool](repeating: false, count: key.count + 1)
            if word == "#" {
                var any = false
                for j in 0...key.count {
                    any = any || reachable[j]
                    next[j] = any
                }
            } else {
                for j in 0..<key.count where reachable[j] && (word == "*" || word == key[j]) {
                    next[j + 1] = true
                }
            }
            reachable = next
        }
        return reachable[key.count]
    }
}
