import java.io.File;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Base64;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.avro.message.BinaryMessageEncoder;

/**
 * Interop check with Apache Avro's reference implementation, using only the .avsc files.
 *   decode <schemasDir> <Name> <base64>  : read a single-object encoded record, print it as JSON
 *   encode-request <schemasDir> <requestId> : print a single-object encoded ExportRequested (base64)
 */
public class AvroInterop {
  static Schema load(String dir, String name) throws Exception {
    return new Schema.Parser().parse(new File(dir, name + ".avsc"));
  }

  public static void main(String[] args) throws Exception {
    String dir = args[1];
    if (args[0].equals("decode")) {
      Schema schema = load(dir, args[2]);
      BinaryMessageDecoder<GenericRecord> decoder = new BinaryMessageDecoder<>(GenericData.get(), schema);
      GenericRecord record = decoder.decode(Base64.getDecoder().decode(args[3]));
      System.out.println(record.toString());
      System.out.println("fingerprint=" + Long.toHexString(org.apache.avro.SchemaNormalization.parsingFingerprint64(schema)));
      return;
    }
    Schema schema = load(dir, "ExportRequested");
    Schema itron = schema.getField("job").schema().getTypes().get(0);
    GenericRecord job = new GenericData.Record(itron);
    job.put("filetype", new GenericData.EnumSymbol(itron.getField("filetype").schema(), "Json"));
    Map<String, String> tokens = new HashMap<>();
    tokens.put("StartEventDate", args[3]);
    tokens.put("ServicePoint", "9000053409");
    job.put("tokens", tokens);
    job.put("is_ohs_request", false);
    job.put("subscription_id", null);
    GenericRecord request = new GenericData.Record(schema);
    request.put("request_id", args[2]);
    request.put("tenant", "java-tenant");
    request.put("connection", "itron");
    request.put("requested_at", 1763900000000L);
    request.put("correlation_id", null);
    request.put("labels", Map.of("producer", "java"));
    request.put("job", job);
    request.put("replay_of", null);
    BinaryMessageEncoder<GenericRecord> encoder = new BinaryMessageEncoder<>(GenericData.get(), schema);
    ByteBuffer buffer = encoder.encode(request);
    byte[] bytes = new byte[buffer.remaining()];
    buffer.get(bytes);
    System.out.println(Base64.getEncoder().encodeToString(bytes));
  }
}
