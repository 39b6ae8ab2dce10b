/// JSON string literals for the bodies the gateway writes itself (problems, merged answers),
/// without a JSON encoder on the path.
public enum JSONString {
    /// `s` as a quoted JSON string, escaping quotes, backslashes and control characters.
    public static func quote(_ s: String) -> String {
        "\"" + escapeContents(s) + "\""
    }

    /// `s` escaped for the inside of a JSON string, without the quotes.
    public static func escapeContents(_ s: String) -> String {
        var out = ""
        out.reserveCapacity(s.utf8.count)
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out
    }
}
