// A small POS client for sscardd in Java (17+): JSON-RPC 2.0, one JSON object a line,
// over the daemon's Unix socket (java.nio UnixDomainSocketAddress, JDK 16+).
//
//   javac PosClient.java && java PosClient /run/sscard/sscard.sock TOKEN 1234 123456
//
// Logs in, reads the card, pays, repeats the same order (idempotent: no second debit)
// and queries it. No JSON library: requests are built with a tiny writer and answers are
// searched for the few fields the POS needs; production code should use its JSON library.
import java.io.*;
import java.net.UnixDomainSocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.Channels;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.util.UUID;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

public class PosClient implements Closeable {
    private final SocketChannel ch;
    private final BufferedReader in;
    private int nextId = 1;

    public static final class RpcException extends Exception {
        public final String kind;
        RpcException(String kind, String line) {
            super(kind + ": " + line);
            this.kind = kind;
        }
    }

    public PosClient(String path) throws IOException {
        ch = SocketChannel.open(UnixDomainSocketAddress.of(path));
        in = new BufferedReader(new InputStreamReader(Channels.newInputStream(ch), StandardCharsets.UTF_8));
    }

    static String quote(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            if (c == '"' || c == '\\') b.append('\\').append(c);
            else if (c < 0x20) b.append(String.format("\\u%04x", (int) c));
            else b.append(c);
        }
        return b.append('"').toString();
    }

    /** Call a method; params is a JSON object text. Returns the raw response line. */
    public String call(String method, String params) throws IOException, RpcException {
        int id = nextId++;
        String req = "{\"jsonrpc\":\"2.0\",\"id\":" + id + ",\"method\":" + quote(method)
                + ",\"params\":" + params + "}\n";
        ch.write(ByteBuffer.wrap(req.getBytes(StandardCharsets.UTF_8)));
        while (true) {
            String line = in.readLine();
            if (line == null) throw new EOFException("sscardd closed the connection");
            if (!line.contains("\"id\":")) continue; // a notification
            if (line.contains("\"error\"")) {
                throw new RpcException(field(line, "kind"), line);
            }
            return line;
        }
    }

    /** The first string or number value of a field in a JSON line. */
    static String field(String json, String name) {
        Matcher m = Pattern.compile("\"" + Pattern.quote(name) + "\"\\s*:\\s*(\"((?:[^\"\\\\]|\\\\.)*)\"|-?\\d+|true|false)")
                .matcher(json);
        if (!m.find()) return null;
        return m.group(2) != null ? m.group(2) : m.group(1);
    }

    @Override
    public void close() throws IOException {
        ch.close();
    }

    public static void main(String[] args) throws Exception {
        if (args.length < 2) {
            System.err.println("usage: java PosClient SOCKET TOKEN [AMOUNT_FEN] [PIN]");
            System.exit(2);
        }
        String amount = args.length > 2 ? args[2] : "1234";
        String pin = args.length > 3 ? args[3] : "123456";
        try (PosClient c = new PosClient(args[0])) {
            String login = c.call("session.login", "{\"token\":" + quote(args[1]) + "}");
            System.out.println("operator " + field(login, "operator") + " role " + field(login, "role"));
            String card = c.call("card.read", "{}");
            System.out.println("card " + field(card, "card_number") + " holder " + field(card, "name"));
            String order = "JAVA-" + UUID.randomUUID().toString().substring(0, 8).toUpperCase();
            String params = "{\"order_id\":" + quote(order) + ",\"amount_fen\":" + Long.parseLong(amount)
                    + ",\"pin\":" + quote(pin) + "}";
            String pay = c.call("pay.debit", params);
            String again = c.call("pay.debit", params);
            if (!field(pay, "txn_id").equals(field(again, "txn_id"))) {
                throw new IllegalStateException("idempotent retry returned another payment");
            }
            String q = c.call("pay.query", "{\"order_id\":" + quote(order) + "}");
            System.out.println("order " + order + " status " + field(q, "status") + " amount "
                    + field(q, "amount_fen") + " balance " + field(q, "balance_after_fen") + " tac " + field(q, "tac"));
        } catch (RpcException e) {
            System.err.println("sscardd refused: " + e.getMessage());
            System.exit(1);
        }
    }
}
