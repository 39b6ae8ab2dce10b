import GangwayAMQPCore
import NIOCore
import Testing

@Suite("JSON validation without parsing")
struct JSONValidatorTests {
    @Test(
        "valid JSON is accepted",
        arguments: [
            #"{}"#, #"[]"#, #" {"a": [1, -2.5e+3, true, false, null, "x\"\\\/\b\f\n\r\t\u00e9"]} "#, "0", "-0.1", "1E9",
            #""plain""#, "[[[[]]]]", #"{"k":{"k":{"k":{}}}}"#, "\"h\u{e9}llo \u{1F600}\"", "\n[1,\r\n2]\t",
        ]
    )
    func valid(text: String) {
        #expect(JSONValidator.isValid(ByteBuffer(string: text)))
    }

    @Test(
        "invalid JSON is refused",
        arguments: [
            "", " ", "{", "}", "[1,]", "{\"a\":1,}", "{a:1}", "{\"a\" 1}", "01", "1.", ".5", "-", "1e", "+1", "tru", "nul",
            "\"unterminated", "\"bad \\x escape\"", "\"\\u12G4\"", "\"raw \u{1} control\"", "[1] [2]", "{\"a\":1}}", "NaN",
        ]
    )
    func invalid(text: String) {
        #expect(!JSONValidator.isValid(ByteBuffer(string: text)))
    }

    @Test("invalid UTF-8 inside strings, and nesting past the limit, are refused")
    func bytes() {
        for bad: [UInt8] in [[0x22, 0xC3, 0x22], [0x22, 0xC0, 0x80, 0x22], [0x22, 0xED, 0xA0, 0x80, 0x22], [0x22, 0xF5, 0x80, 0x80, 0x80, 0x22]] {
            #expect(!JSONValidator.isValid(ByteBuffer(bytes: bad)), "\(bad)")
        }
        #expect(JSONValidator.isValid(ByteBuffer(bytes: [0x22, 0xE2, 0x82, 0xAC, 0x22])))
        let deep = String(repeating: "[", count: 600) + String(repeating: "]", count: 600)
        #expect(!JSONValidator.isValid(ByteBuffer(string: deep)))
        let fine = String(repeating: "[", count: 100) + String(repeating: "]", count: 100)
        #expect(JSONValidator.isValid(ByteBuffer(string: fine)))
    }
}
