#include "coldstart/fetch/url.h"

#include <gtest/gtest.h>

namespace coldstart::fetch {
namespace {

bool Contains(const std::string& s, std::string_view part) { return s.find(part) != std::string::npos; }

TEST(ParseSource, GcsBucketAndPrefix) {
  auto s = ParseSource("gs://my-bucket/models/llama-3/");
  ASSERT_TRUE(s.ok()) << s.error().message;
  EXPECT_EQ(s->kind, SourceKind::kGcs);
  EXPECT_EQ(s->bucket, "my-bucket");
  EXPECT_EQ(s->object, "models/llama-3/");
  EXPECT_EQ(s->original, "gs://my-bucket/models/llama-3/");

  for (const char* whole : {"gs://my-bucket", "gs://my-bucket/"}) {
    auto b = ParseSource(whole);
    ASSERT_TRUE(b.ok()) << whole;
    EXPECT_EQ(b->bucket, "my-bucket");
    EXPECT_EQ(b->object, "");
  }
  auto upper = ParseSource("GS://abc/x.safetensors");
  ASSERT_TRUE(upper.ok());
  EXPECT_EQ(upper->object, "x.safetensors");
}

TEST(ParseSource, ValidBucketNames) {
  std::string c63(63, 'a');
  for (std::string name : {std::string("abc"), std::string("a_b-c.d"), std::string("0bucket9"), c63,
                           c63 + "." + c63 + "." + c63, std::string("1.2.3"), std::string("1.2.3.4.5"),
                           std::string("my.bucket.example.com")}) {
    auto s = ParseSource("gs://" + name + "/o");
    EXPECT_TRUE(s.ok()) << name << ": " << (s.ok() ? "" : s.error().message);
  }
}

TEST(ParseSource, InvalidBucketNamesSayWhy) {
  struct Case {
    std::string text;
    std::string_view why;
  };
  std::string c64(64, 'a');
  const Case cases[] = {
      {"gs://", "no bucket"},
      {"gs:///object", "no bucket"},
      {"gs://ab", "3 to 63"},
      {"gs://" + c64, "3 to 63"},
      {"gs://" + c64 + ".abc", "at most 63"},
      {"gs://My-Bucket", "lower-case"},
      {"gs://bad$name", "only a-z"},
      {"gs://bad name", "only a-z"},
      {"gs://-bucket", "start and end"},
      {"gs://bucket-", "start and end"},
      {"gs://bucket.", "start and end"},
      {"gs://a..b", "empty component"},
      {"gs://192.168.5.4", "IP address"},
      {"gs://bucket//object", "starts with '/'"},
      {"gs:/bucket/x", "malformed gs://"},
      {"gs:bucket", "malformed gs://"},
      {"s3://bucket/x", "unsupported scheme 's3://'"},
      {"", "empty source"},
      {"https://", "no host"},
      {"http:///path", "no host"},
      {"https://host/a b", "spaces"},
  };
  for (const auto& c : cases) {
    auto s = ParseSource(c.text);
    ASSERT_FALSE(s.ok()) << c.text;
    EXPECT_EQ(s.error().code, Errc::kInvalidArgument) << c.text;
    EXPECT_TRUE(Contains(s.error().message, c.why)) << c.text << " -> " << s.error().message;
  }
  EXPECT_FALSE(ParseSource("gs://bucket/" + std::string(1025, 'o')).ok());
  EXPECT_FALSE(ParseSource("gs://bucket/a\nb").ok());
}

TEST(ParseSource, HttpAndLocal) {
  auto h = ParseSource("https://huggingface.co/org/model/resolve/main/model.safetensors?download=1");
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->kind, SourceKind::kHttp);
  EXPECT_EQ(h->url, "https://huggingface.co/org/model/resolve/main/model.safetensors?download=1");
  auto h2 = ParseSource("HTTP://127.0.0.1:8080/m/");
  ASSERT_TRUE(h2.ok());
  EXPECT_EQ(h2->kind, SourceKind::kHttp);

  for (const char* p : {"/models/llama", "relative/dir", "./model.safetensors", "model.safetensors",
                        "dir:with:colons/x", "~/models"}) {
    auto l = ParseSource(p);
    ASSERT_TRUE(l.ok()) << p;
    EXPECT_EQ(l->kind, SourceKind::kLocal) << p;
    EXPECT_EQ(l->path, p);
  }
  EXPECT_EQ(SourceKindName(SourceKind::kGcs), "gcs");
}

TEST(ResolveGcsEndpoint, DefaultEmulatorAndPrecedence) {
  auto d = ResolveGcsEndpoint("", Env::FromMap({}));
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->base, "https://storage.googleapis.com");
  EXPECT_FALSE(d->emulator);

  auto e = ResolveGcsEndpoint("", Env::FromMap({{"STORAGE_EMULATOR_HOST", "localhost:9023"}}));
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->base, "http://localhost:9023");
  EXPECT_TRUE(e->emulator);

  auto es = ResolveGcsEndpoint("", Env::FromMap({{"STORAGE_EMULATOR_HOST", "https://emu.local:4443/"}}));
  ASSERT_TRUE(es.ok());
  EXPECT_EQ(es->base, "https://emu.local:4443");
  EXPECT_TRUE(es->emulator);

  Env both = Env::FromMap({{"STORAGE_EMULATOR_HOST", "localhost:9023"},
                           {"COLDSTART_ENDPOINT", "https://private.example.com/storage/"}});
  auto env_ep = ResolveGcsEndpoint("", both);
  ASSERT_TRUE(env_ep.ok());
  EXPECT_EQ(env_ep->base, "https://private.example.com/storage");
  EXPECT_FALSE(env_ep->emulator);

  auto flag = ResolveGcsEndpoint("http://127.0.0.1:1234/", both);
  ASSERT_TRUE(flag.ok());
  EXPECT_EQ(flag->base, "http://127.0.0.1:1234");
  EXPECT_FALSE(flag->emulator);

  auto empty_emu = ResolveGcsEndpoint("", Env::FromMap({{"STORAGE_EMULATOR_HOST", ""}}));
  ASSERT_TRUE(empty_emu.ok());
  EXPECT_EQ(empty_emu->base, kDefaultGcsEndpoint);
}

TEST(ResolveGcsEndpoint, RejectsMalformed) {
  Env none = Env::FromMap({});
  auto no_scheme = ResolveGcsEndpoint("storage.example.com", none);
  ASSERT_FALSE(no_scheme.ok());
  EXPECT_TRUE(Contains(no_scheme.error().message, "--endpoint"));
  EXPECT_TRUE(Contains(no_scheme.error().message, "http://"));
  EXPECT_FALSE(ResolveGcsEndpoint("https://h/?key=1", none).ok());
  EXPECT_FALSE(ResolveGcsEndpoint("https://", none).ok());
  auto bad_env = ResolveGcsEndpoint("", Env::FromMap({{"STORAGE_EMULATOR_HOST", "bad host"}}));
  ASSERT_FALSE(bad_env.ok());
  EXPECT_TRUE(Contains(bad_env.error().message, "STORAGE_EMULATOR_HOST"));
  auto bad_ep = ResolveGcsEndpoint("", Env::FromMap({{"COLDSTART_ENDPOINT", "ftp://x"}}));
  ASSERT_FALSE(bad_ep.ok());
  EXPECT_TRUE(Contains(bad_ep.error().message, "COLDSTART_ENDPOINT"));
}

TEST(UrlEncode, UnreservedKeptRestEscaped) {
  EXPECT_EQ(UrlEncode("AZaz09-._~"), "AZaz09-._~");
  EXPECT_EQ(UrlEncode("models/llama 3/model-00001.safetensors"),
            "models%2Fllama%203%2Fmodel-00001.safetensors");
  EXPECT_EQ(UrlEncode("a+b&c=d?e#f%"), "a%2Bb%26c%3Dd%3Fe%23f%25");
  EXPECT_EQ(UrlEncode("\xc3\xa9"), "%C3%A9");
  EXPECT_EQ(UrlEncode(std::string_view("\0", 1)), "%00");
  EXPECT_EQ(UrlEncode(""), "");
}

TEST(JoinUrl, FolderIndexAbsoluteAndRooted) {
  EXPECT_EQ(JoinUrl("https://h/a/b/", "model-00001.safetensors"), "https://h/a/b/model-00001.safetensors");
  EXPECT_EQ(JoinUrl("https://h/a/b/model.safetensors.index.json", "model-00001.safetensors"),
            "https://h/a/b/model-00001.safetensors");
  EXPECT_EQ(JoinUrl("https://h/a/index.json?sig=x#frag", "m.safetensors"), "https://h/a/m.safetensors");
  EXPECT_EQ(JoinUrl("https://h", "m.safetensors"), "https://h/m.safetensors");
  EXPECT_EQ(JoinUrl("https://h:8443/a/b/", "/root.json"), "https://h:8443/root.json");
  EXPECT_EQ(JoinUrl("https://h/a/", "//cdn.example/x"), "https://cdn.example/x");
  EXPECT_EQ(JoinUrl("https://h/a/", "http://other/y"), "http://other/y");
  EXPECT_EQ(JoinUrl("https://h/a/", ""), "https://h/a/");
  EXPECT_EQ(JoinUrl("https://h/a/i.json?old=1", "?new=2"), "https://h/a/i.json?new=2");
  EXPECT_EQ(JoinUrl("/local/dir", "m.safetensors"), "/local/dir/m.safetensors");
}

TEST(RedactUrl, DropsUserinfoQueryAndFragment) {
  EXPECT_EQ(RedactUrl("https://user:pw@h:8/p/a?X-Goog-Signature=secret#f"), "https://h:8/p/a");
  EXPECT_EQ(RedactUrl("http://h?token=t"), "http://h");
  EXPECT_EQ(RedactUrl("http://h/p"), "http://h/p");
}

TEST(EnvTable, RemoteVariablesAreKnown) {
  Env env = Env::FromMap({{"COLDSTART_ENDPOINT", "x"},          {"COLDSTART_ACCESS_TOKEN", "x"},
                          {"COLDSTART_METADATA", "off"},        {"COLDSTART_RETRY_ATTEMPTS", "3"},
                          {"COLDSTART_RETRY_INITIAL", "1s"},    {"COLDSTART_RETRY_MAX_BACKOFF", "2s"},
                          {"COLDSTART_RETRY_DEADLINE", "1m"},   {"COLDSTART_STALL_TIMEOUT", "5s"},
                          {"STORAGE_EMULATOR_HOST", "h:1"},     {"GOOGLE_APPLICATION_CREDENTIALS", "/k"}});
  EXPECT_TRUE(env.Validate().ok());
  for (std::string_view name : {"STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS", "GCE_METADATA_HOST",
                                "CLOUDSDK_CONFIG", "HOME", "COLDSTART_ACCESS_TOKEN", "COLDSTART_ENDPOINT",
                                "COLDSTART_METADATA"}) {
    bool found = false;
    for (const auto& v : KnownEnvVars()) found = found || v.name == name;
    EXPECT_TRUE(found) << name;
  }
}

}  // namespace
}  // namespace coldstart::fetch
