import NIOCore

/// Server-Sent Events framing (WHATWG HTML, "event stream interpretation").
public enum SSEEncoder {
    /// One event. Every line of `data` becomes a `data:` field; CR, LF and CRLF all end a line.
    public static func event(id: String? = nil, name: String? = nil, data: String) -> ByteBuffer {
        var out = ""
        if let id { out += "id: \(id)\n" }
        if let name { out += "event: \(name)\n" }
        var line = ""
        var previousCR = false
        for scalar in data.unicodeScalars {
            if scalar == "\n" && previousCR {
                previousCR = false
                continue
            }
            previousCR = scalar == "\r"
            if scalar == "\n" || scalar == "\r" {
                out += "data: \(line)\n"
                line = ""
            } else {
                line.unicodeScalars.append(scalar)
            }
        }
        out += "data: \(line)\n\n"
        return ByteBuffer(string: out)
    }
}
