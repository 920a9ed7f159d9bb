//! The S3-compatible endpoint driven by real S3 clients: the aws CLI v1 (`aws s3 mb/cp/ls/rm`,
//! a multipart upload) and boto3 (ranges, metadata, listings with delimiter and pages, batch
//! deletes, error codes, refused signatures, bodies cut short or forged leaving nothing), plus
//! `nubo s3 credentials` and an object put through S3 read back through the admin API. The
//! clients come from the venv that `scripts/test.sh` fills from `tests/s3/requirements.txt`.

use crate::support::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// The venv holding boto3 and the aws CLI: `NUBO_S3_VENV`, else
/// `${NUBO_CACHE_DIR:-~/.cache/nubo}/venv` (where scripts/test.sh puts it).
fn venv() -> PathBuf {
    let dir = match std::env::var_os("NUBO_S3_VENV").filter(|v| !v.is_empty()) {
        Some(v) => PathBuf::from(v),
        None => {
            let cache = std::env::var_os("NUBO_CACHE_DIR")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
                        .join(".cache/nubo")
                });
            cache.join("venv")
        }
    };
    assert!(
        dir.join("bin/aws").exists() && dir.join("bin/python").exists(),
        "no S3 clients in {}: run scripts/test.sh, or `python3 -m venv {0} && {0}/bin/pip install -r tests/s3/requirements.txt`",
        dir.display()
    );
    dir
}

/// What a test needs to reach the endpoint.
struct S3 {
    url: String,
    access_key: String,
    secret_key: String,
    /// Holds the aws CLI's config file (multipart sizes) and scratch files.
    dir: tempfile::TempDir,
}

impl S3 {
    fn of(s: &Server) -> S3 {
        let url = eventually(Duration::from_secs(10), || {
            s.stdout()
                .lines()
                .find_map(|l| l.strip_prefix("s3 listening on ").map(str::to_owned))
        });
        let creds = s.api("/_nubo/api/v1/s3/credentials");
        assert_eq!(creds["endpoint"], url.as_str());
        let dir = tempfile::tempdir().unwrap();
        // Small multipart sizes so a 20 MiB copy goes up in parts of 5 MiB.
        std::fs::write(
            dir.path().join("aws-config"),
            "[default]\nregion = us-east-1\ns3 =\n  multipart_threshold = 5MB\n  multipart_chunksize = 5MB\n",
        )
        .unwrap();
        S3 {
            url,
            access_key: creds["access_key_id"].as_str().unwrap().to_owned(),
            secret_key: creds["secret_access_key"].as_str().unwrap().to_owned(),
            dir,
        }
    }

    fn env(&self, cmd: &mut Command) {
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("AWS_CONFIG_FILE", self.dir.path().join("aws-config"))
            .env("AWS_SHARED_CREDENTIALS_FILE", self.dir.path().join("none"))
            .env("AWS_ACCESS_KEY_ID", &self.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret_key)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("S3_URL", &self.url);
    }

    /// Runs `aws --endpoint-url URL s3 ARGS`.
    fn aws(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(venv().join("bin/aws"));
        cmd.args(["--endpoint-url", &self.url, "s3"]).args(args);
        self.env(&mut cmd);
        run_bounded(cmd)
    }

    /// Runs `aws s3 ARGS` and returns its stdout, failing the test when it fails.
    fn aws_ok(&self, args: &[&str]) -> String {
        let out = self.aws(args);
        assert!(
            out.status.success(),
            "aws s3 {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a Python script with boto3 at hand (`s3` is a client on the endpoint) and returns
    /// its stdout, failing the test when it fails.
    fn boto3(&self, script: &str) -> String {
        let prelude = "import os, boto3, botocore\nfrom botocore.config import Config\n\
            s3 = boto3.client('s3', endpoint_url=os.environ['S3_URL'], \
            config=Config(s3={'addressing_style': 'path'}, retries={'max_attempts': 1}))\n";
        let mut cmd = Command::new(venv().join("bin/python"));
        cmd.arg("-c").arg(format!("{prelude}{script}"));
        self.env(&mut cmd);
        let out = run_bounded(cmd);
        assert!(
            out.status.success(),
            "boto3 script failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Runs a client, killing it when it hangs.
fn run_bounded(mut cmd: Command) -> Output {
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting an S3 client");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("an S3 client did not finish within 120 s");
        }
    }
}

/// Bytes that differ at every offset a misplaced part would show.
fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1])
        .collect()
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn aws_cli_makes_buckets_copies_lists_and_removes() {
    let s = Server::start();
    let c = S3::of(&s);
    c.aws_ok(&["mb", "s3://photos"]);
    assert!(c.aws_ok(&["ls"]).contains("photos"));

    write(&c.path("small.txt"), b"hello from the aws cli\n");
    let small = c.path("small.txt");
    c.aws_ok(&["cp", small.to_str().unwrap(), "s3://photos/notes/small.txt"]);

    // 20 MiB with 5 MiB parts: a multipart upload of four parts.
    let big = pattern(20 * 1024 * 1024);
    write(&c.path("big.bin"), &big);
    let big_path = c.path("big.bin");
    c.aws_ok(&["cp", big_path.to_str().unwrap(), "s3://photos/big.bin"]);
    let head = c.boto3(
        "h = s3.head_object(Bucket='photos', Key='big.bin')\n\
         print(h['ETag'].strip('\"'), h['ContentLength'])\n",
    );
    let (etag, len) = head.trim().split_once(' ').unwrap();
    assert_eq!(len, big.len().to_string());
    assert!(
        etag.ends_with("-4"),
        "a 20 MiB copy with 5 MiB parts is a multipart object of 4 parts: {head}"
    );

    let listing = c.aws_ok(&["ls", "s3://photos/"]);
    assert!(listing.contains("PRE notes/"), "{listing}");
    assert!(
        listing.contains(&format!("{} big.bin", big.len())),
        "{listing}"
    );
    let recursive = c.aws_ok(&["ls", "--recursive", "s3://photos"]);
    assert!(recursive.contains("notes/small.txt"), "{recursive}");

    // Both come back byte for byte (the big one in ranged parts, as the CLI does).
    let back = c.path("back.bin");
    c.aws_ok(&["cp", "s3://photos/big.bin", back.to_str().unwrap()]);
    assert!(
        std::fs::read(&back).unwrap() == big,
        "the big object came back different"
    );
    let back_small = c.path("back.txt");
    c.aws_ok(&[
        "cp",
        "s3://photos/notes/small.txt",
        back_small.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read(&back_small).unwrap(),
        b"hello from the aws cli\n"
    );

    // A bucket with objects cannot go; emptied, it can.
    let out = c.aws(&["rb", "s3://photos"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("BucketNotEmpty"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.aws_ok(&["rm", "s3://photos/big.bin"]);
    c.aws_ok(&["rm", "--recursive", "s3://photos/notes/"]);
    assert_eq!(c.aws_ok(&["ls", "--recursive", "s3://photos"]).trim(), "");
    c.aws_ok(&["rb", "s3://photos"]);
    assert!(!c.aws_ok(&["ls"]).contains("photos"));
}

#[test]
fn boto3_objects_ranges_metadata_listings_and_errors() {
    let s = Server::start();
    let c = S3::of(&s);
    let out = c.boto3(
        r#"
from botocore.exceptions import ClientError
def code(f):
    try:
        f()
    except ClientError as e:
        return e.response['Error']['Code'], e.response['ResponseMetadata']['HTTPStatusCode']
    raise AssertionError('no error')

assert code(lambda: s3.put_object(Bucket='nope', Key='k', Body=b'x')) == ('NoSuchBucket', 404)
s3.create_bucket(Bucket='docs')
assert code(lambda: s3.create_bucket(Bucket='docs'))[0] == 'BucketAlreadyOwnedByYou'
s3.head_bucket(Bucket='docs')
assert code(lambda: s3.head_bucket(Bucket='other'))[1] == 404

# Content type and metadata round trip; the etag is the MD5.
r = s3.put_object(Bucket='docs', Key='a/readme.txt', Body=b'0123456789',
                  ContentType='text/plain', Metadata={'Owner': 'ada', 'stage': 'draft'})
assert r['ETag'] == '"781e5e245d69b566979b86e28d23f2c7"', r['ETag']
h = s3.head_object(Bucket='docs', Key='a/readme.txt')
assert h['ContentLength'] == 10 and h['ContentType'] == 'text/plain', h
assert h['Metadata'] == {'owner': 'ada', 'stage': 'draft'}, h['Metadata']
g = s3.get_object(Bucket='docs', Key='a/readme.txt')
assert g['Body'].read() == b'0123456789' and g['Metadata']['owner'] == 'ada'

# Ranges: a slice, an open end, a suffix, and one past the end.
g = s3.get_object(Bucket='docs', Key='a/readme.txt', Range='bytes=2-5')
assert g['Body'].read() == b'2345' and g['ContentRange'] == 'bytes 2-5/10', g['ContentRange']
assert g['ResponseMetadata']['HTTPStatusCode'] == 206
assert s3.get_object(Bucket='docs', Key='a/readme.txt', Range='bytes=7-')['Body'].read() == b'789'
assert s3.get_object(Bucket='docs', Key='a/readme.txt', Range='bytes=-3')['Body'].read() == b'789'
assert s3.get_object(Bucket='docs', Key='a/readme.txt', Range='bytes=8-100')['Body'].read() == b'89'
assert code(lambda: s3.get_object(Bucket='docs', Key='a/readme.txt', Range='bytes=10-12')) == ('InvalidRange', 416)
assert code(lambda: s3.get_object(Bucket='docs', Key='missing')) == ('NoSuchKey', 404)

# Copy keeps the metadata unless told to replace it.
s3.copy_object(Bucket='docs', Key='copy.txt', CopySource={'Bucket': 'docs', 'Key': 'a/readme.txt'})
h = s3.head_object(Bucket='docs', Key='copy.txt')
assert h['Metadata'] == {'owner': 'ada', 'stage': 'draft'} and h['ContentLength'] == 10

s3.copy_object(Bucket='docs', Key='copy.txt', CopySource={'Bucket': 'docs', 'Key': 'a/readme.txt'},
               MetadataDirective='REPLACE', Metadata={'fresh': '1'})
assert s3.head_object(Bucket='docs', Key='copy.txt')['Metadata'] == {'fresh': '1'}

# A listing with a delimiter, one page of two at a time.
for k in ['a/readme.txt', 'b/1', 'b/2', 'c', 'd', 'e+f g']:
    s3.put_object(Bucket='docs', Key=k, Body=k.encode())
keys, prefixes, token, pages = [], [], None, 0
while pages < 10:
    args = dict(Bucket='docs', Delimiter='/', MaxKeys=2)
    if token:
        args['ContinuationToken'] = token
    p = s3.list_objects_v2(**args)
    pages += 1
    keys += [o['Key'] for o in p.get('Contents', [])]
    prefixes += [x['Prefix'] for x in p.get('CommonPrefixes', [])]
    assert p['KeyCount'] <= 2
    if not p['IsTruncated']:
        break
    token = p['NextContinuationToken']
assert prefixes == ['a/', 'b/'], prefixes
assert keys == ['c', 'copy.txt', 'd', 'e+f g'], keys
assert pages == 3, pages
p = s3.list_objects_v2(Bucket='docs', Prefix='b/', StartAfter='b/1')
assert [o['Key'] for o in p['Contents']] == ['b/2'] and p['Contents'][0]['Size'] == 3
p = s3.list_objects(Bucket='docs', Prefix='b/')
assert [o['Key'] for o in p['Contents']] == ['b/1', 'b/2']

# Batch delete, one of the keys absent (S3 reports it deleted too).
r = s3.delete_objects(Bucket='docs', Delete={'Objects': [{'Key': k} for k in ['b/1', 'b/2', 'c', 'never']]})
assert sorted(d['Key'] for d in r['Deleted']) == ['b/1', 'b/2', 'c', 'never'], r
assert not r.get('Errors')
left = [o['Key'] for o in s3.list_objects_v2(Bucket='docs')['Contents']]
assert left == ['a/readme.txt', 'copy.txt', 'd', 'e+f g'], left
assert code(lambda: s3.delete_bucket(Bucket='docs')) == ('BucketNotEmpty', 409)

# A multipart upload by hand: a part too small to be anything but last is refused at completion.
u = s3.create_multipart_upload(Bucket='docs', Key='parts.bin', ContentType='application/x-test')['UploadId']
assert [x['UploadId'] for x in s3.list_multipart_uploads(Bucket='docs')['Uploads']] == [u]
e1 = s3.upload_part(Bucket='docs', Key='parts.bin', UploadId=u, PartNumber=1, Body=b'a' * (5 << 20))['ETag']
e2 = s3.upload_part(Bucket='docs', Key='parts.bin', UploadId=u, PartNumber=2, Body=b'tail')['ETag']
assert code(lambda: s3.complete_multipart_upload(Bucket='docs', Key='parts.bin', UploadId=u,
    MultipartUpload={'Parts': [{'PartNumber': 1, 'ETag': e2}, {'PartNumber': 2, 'ETag': e2}]}))[0] == 'InvalidPart'
r = s3.complete_multipart_upload(Bucket='docs', Key='parts.bin', UploadId=u,
    MultipartUpload={'Parts': [{'PartNumber': 1, 'ETag': e1}, {'PartNumber': 2, 'ETag': e2}]})
assert r['ETag'].endswith('-2"'), r['ETag']
h = s3.head_object(Bucket='docs', Key='parts.bin')
assert h['ContentLength'] == (5 << 20) + 4 and h['ContentType'] == 'application/x-test'
assert s3.get_object(Bucket='docs', Key='parts.bin', Range='bytes=-5')['Body'].read() == b'atail'
assert code(lambda: s3.upload_part(Bucket='docs', Key='parts.bin', UploadId=u, PartNumber=3, Body=b'x')) == ('NoSuchUpload', 404)
u2 = s3.create_multipart_upload(Bucket='docs', Key='gone.bin')['UploadId']
s3.abort_multipart_upload(Bucket='docs', Key='gone.bin', UploadId=u2)
assert not s3.list_multipart_uploads(Bucket='docs').get('Uploads')
print('all good')
"#,
    );
    assert_eq!(out.trim(), "all good");
}

#[test]
fn wrong_secrets_and_unsigned_requests_are_refused() {
    let s = Server::start();
    let c = S3::of(&s);
    let out = c.boto3(
        r#"
from botocore.exceptions import ClientError
from botocore import UNSIGNED
def code(client):
    try:
        client.list_buckets()
    except ClientError as e:
        return e.response['Error']['Code'], e.response['ResponseMetadata']['HTTPStatusCode']
    raise AssertionError('accepted')
wrong = boto3.client('s3', endpoint_url=os.environ['S3_URL'],
    aws_access_key_id=os.environ['AWS_ACCESS_KEY_ID'],
    aws_secret_access_key='x' + os.environ['AWS_SECRET_ACCESS_KEY'][1:])
print(*code(wrong))
stranger = boto3.client('s3', endpoint_url=os.environ['S3_URL'], aws_access_key_id='NOBODY0000',
    aws_secret_access_key=os.environ['AWS_SECRET_ACCESS_KEY'])
print(*code(stranger))
anonymous = boto3.client('s3', endpoint_url=os.environ['S3_URL'], config=Config(signature_version=UNSIGNED))
print(*code(anonymous))
s3.list_buckets()
print('signed ok')
"#,
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "SignatureDoesNotMatch 403", "{out}");
    assert!(
        lines[1].ends_with(" 403"),
        "an unknown key id is refused: {out}"
    );
    assert_eq!(lines[2], "AccessDenied 403", "{out}");
    assert_eq!(lines[3], "signed ok");
}

#[test]
fn a_body_that_is_cut_short_or_fails_its_hash_stores_nothing() {
    let s = Server::start();
    let c = S3::of(&s);
    let out = c.boto3(
        r#"
import socket
from urllib.parse import urlparse
from botocore.awsrequest import AWSRequest
from botocore.auth import S3SigV4Auth
s3.create_bucket(Bucket='raw')
creds = boto3.Session().get_credentials()
url = urlparse(os.environ['S3_URL'])

def raw_put(key, signed_body, sent_body, close_early):
    # Signed for `signed_body` (its sha256 in x-amz-content-sha256), then sent with `sent_body`.
    req = AWSRequest(method='PUT', url=f"{os.environ['S3_URL']}/raw/{key}", data=signed_body)
    S3SigV4Auth(creds, 's3', 'us-east-1').add_auth(req)
    headers = {k: v for k, v in req.prepare().headers.items() if k.lower() not in ('host', 'content-length')}
    head = f"PUT /raw/{key} HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Length: {len(signed_body)}\r\nConnection: close\r\n"
    head += ''.join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    sock = socket.create_connection((url.hostname, url.port), timeout=30)
    sock.sendall(head.encode() + sent_body)
    if close_early:
        sock.shutdown(socket.SHUT_WR)
    answer = b''
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    sock.close()
    return answer.split(b'\r\n', 1)[0].decode()

body = bytes(range(256)) * 400
print(raw_put('whole.bin', body, body, False))
print(raw_put('forged.bin', body, body[:-1] + b'!', False))
print(raw_put('short.bin', body, body[:1000], True))
keys = [o['Key'] for o in s3.list_objects_v2(Bucket='raw').get('Contents', [])]
print(keys)
"#,
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0], "HTTP/1.1 200 OK",
        "a correctly signed raw put works: {out}"
    );
    assert!(
        lines[1].starts_with("HTTP/1.1 400"),
        "a body whose hash differs is refused: {out}"
    );
    assert_eq!(lines[3], "['whole.bin']", "{out}");
}

#[test]
fn objects_put_through_s3_are_the_admin_apis_objects() {
    let s = Server::start();
    let c = S3::of(&s);
    c.boto3(
        "s3.create_bucket(Bucket='shared')\n\
         s3.put_object(Bucket='shared', Key='dir/hello.txt', Body=b'hi admin', ContentType='text/plain')\n",
    );
    let r = http(
        s.addr,
        "GET",
        "/_nubo/api/v1/buckets/shared/objects/dir/hello.txt",
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "hi admin");
    assert_eq!(r.header("content-type"), Some("text/plain"));
    // And the other way: what the admin API writes, S3 reads.
    let w = http(
        s.addr,
        "PUT",
        "/_nubo/api/v1/buckets/shared/objects/from-admin",
        &[],
        b"written by admin",
    );
    assert!(w.status == 200 || w.status == 201, "{}", w.text());
    let got = c
        .boto3("print(s3.get_object(Bucket='shared', Key='from-admin')['Body'].read().decode())\n");
    assert_eq!(got.trim(), "written by admin");
}

#[test]
fn cli_shows_the_credentials_the_endpoint_takes_and_they_survive_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = Server::start_in(&data, &[]);
    let c = S3::of(&s);
    let text = s.ok(&["s3", "credentials"]);
    assert!(text.contains(&c.access_key), "{text}");
    assert!(text.contains(&c.secret_key), "{text}");
    assert!(text.contains(&c.url), "{text}");
    let env = s.ok(&["s3", "credentials", "--env"]);
    assert!(env.contains(&format!("export AWS_SECRET_ACCESS_KEY={}", c.secret_key)));
    // Those lines alone point the aws CLI at the endpoint (no --endpoint-url).
    let mut aws = Command::new(venv().join("bin/aws"));
    aws.args([
        "s3api",
        "list-buckets",
        "--query",
        "Owner.ID",
        "--output",
        "text",
    ]);
    c.env(&mut aws);
    aws.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY");
    for line in env.lines() {
        let (k, v) = line
            .strip_prefix("export ")
            .unwrap()
            .split_once('=')
            .unwrap();
        aws.env(k, v);
    }
    let out = run_bounded(aws);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "nubo");
    c.boto3("s3.create_bucket(Bucket='kept')\n");
    // The generated pair is private to the server's user.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(data.join("s3-credentials.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let (status, _) = s.terminate();
    assert!(status.success());

    // Restarted, the same pair still works (a client keeps its configuration).
    let s = Server::start_in(&data, &[]);
    let again = S3::of(&s);
    assert_eq!(again.access_key, c.access_key);
    assert_eq!(again.secret_key, c.secret_key);
    assert!(
        again
            .boto3("print([b['Name'] for b in s3.list_buckets()['Buckets']])\n")
            .contains("kept")
    );

    // With the endpoint off, the admin API says how to turn it on.
    drop(s);
    let off = Server::start_in_env(&data, &[], &[("NUBO_S3_LISTEN", "off")]);
    let r = http(off.addr, "GET", "/_nubo/api/v1/s3/credentials", &[], b"");
    assert_eq!(r.status, 404);
    assert!(r.text().contains("--s3-listen"), "{}", r.text());
}

#[test]
fn uploads_through_the_s3_endpoint_trigger_object_events() {
    let s = Server::start();
    let manifest = format!(
        "[app]\nname = \"drops\"\n\n[function.seen]\nsource = \"{}\"\nenv = {{ CHAIN_ROUTE = \"/\" }}\n\n\
         [[trigger.object]]\nfunction = \"seen\"\nbucket = \"drop-zone\"\n",
        guest("chain").display()
    );
    let dir = app_dir(&manifest);
    s.ok(&["deploy", "--no-build", dir.path().to_str().unwrap()]);
    let s3 = S3::of(&s);
    // One plain put and one multipart upload (over the 5 MB threshold of the test config).
    let small = s3.dir.path().join("small.txt");
    std::fs::write(&small, b"hello").unwrap();
    let big = s3.dir.path().join("big.bin");
    std::fs::write(&big, vec![7u8; 6 * 1024 * 1024]).unwrap();
    s3.aws_ok(&["cp", small.to_str().unwrap(), "s3://drop-zone/in/small.txt"]);
    s3.aws_ok(&["cp", big.to_str().unwrap(), "s3://drop-zone/in/big.bin"]);
    s3.aws_ok(&["rm", "s3://drop-zone/in/small.txt"]);
    let seen = eventually(Duration::from_secs(30), || {
        let r = http(
            s.addr,
            "GET",
            "/_nubo/api/v1/apps/drops/logs?limit=100",
            &[],
            b"",
        );
        let events: Vec<String> = r
            .text()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["line"].as_str().map(str::to_string))
            .filter(|l| l.starts_with("EVENT "))
            .collect();
        (events.len() >= 2).then_some(events)
    });
    // The trigger watches "created" only: the delete is not delivered.
    assert!(
        seen.iter().any(
            |e| e.starts_with("EVENT dev.nubo.object.created ") && e.contains(" in/small.txt ")
        ),
        "{seen:?}"
    );
    assert!(seen.iter().any(|e| e.contains(" in/big.bin ")), "{seen:?}");
    assert!(!seen.iter().any(|e| e.contains("deleted")), "{seen:?}");
}
