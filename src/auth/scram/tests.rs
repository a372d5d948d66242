//! Tests of the SCRAM server: exchanges against postgres-protocol's client, known verifiers, malformed
//! messages and random input.

use super::*;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

#[test]
fn a_mock_exchange_looks_real_and_always_fails() {
    let salt_of = |secret: &[u8], user: &str| {
        let mut s = ScramServer::mock(secret, user);
        let first = s
            .client_first(SCRAM_SHA_256, b"n,,n=,r=abc")
            .expect("server-first");
        let text = String::from_utf8(first).expect("utf-8");
        assert!(text.ends_with(",i=4096"), "{text}");
        let salt = text.split(",s=").nth(1).and_then(|r| r.split(',').next());
        STANDARD.decode(salt.expect("salt")).expect("base64")
    };
    // Deterministic per user and secret, 16 bytes like a real verifier's, different across users.
    let a = salt_of(b"secret-1", "nobody");
    assert_eq!(a.len(), DEFAULT_SALT_LEN);
    assert_eq!(a, salt_of(b"secret-1", "nobody"));
    assert_ne!(a, salt_of(b"secret-1", "somebody"));
    assert_ne!(a, salt_of(b"secret-2", "nobody"));
    // Whatever the password, the proof is refused as a wrong password is.
    for password in ["", "x", "nobody"] {
        let mut server = ScramServer::mock(b"secret-1", "nobody");
        let mut client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
        let first = server
            .client_first(SCRAM_SHA_256, client.message())
            .expect("client-first accepted");
        client.update(&first).expect("client accepts server-first");
        assert!(matches!(
            server.client_final(client.message()),
            Err(AuthError::Failed)
        ));
    }
}

fn verifier(password: &str) -> ScramVerifier {
    // Few iterations keep the tests fast; the algorithm is the same.
    ScramVerifier::from_password_with_salt(password, b"0123456789abcdef", 64)
}

/// Runs a full exchange; returns the server's verdict and whether the client accepted
/// the server-final-message.
fn exchange(
    v: ScramVerifier,
    password: &str,
    binding: ChannelBinding,
) -> (Result<(), AuthError>, bool) {
    let mut server = ScramServer::new(v);
    let mut client = ScramSha256::new(password.as_bytes(), binding);
    let server_first = server
        .client_first(SCRAM_SHA_256, client.message())
        .expect("client-first accepted");
    client
        .update(&server_first)
        .expect("client accepts server-first");
    match server.client_final(client.message()) {
        Ok(server_final) => (Ok(()), client.finish(&server_final).is_ok()),
        Err(e) => (Err(e), false),
    }
}

#[test]
fn round_trip_with_postgres_protocol_client() {
    for binding in [ChannelBinding::unrequested(), ChannelBinding::unsupported()] {
        let (res, client_ok) = exchange(verifier("s3cret"), "s3cret", binding);
        assert!(res.is_ok(), "{res:?}");
        assert!(client_ok, "client must accept the server signature");
    }
}

#[test]
fn wrong_password_fails() {
    let (res, _) = exchange(verifier("s3cret"), "wrong", ChannelBinding::unrequested());
    let err = res.unwrap_err();
    assert!(matches!(err, AuthError::Failed), "{err:?}");
    assert_eq!(err.sqlstate(), "28P01");
}

#[test]
fn saslprep_is_applied() {
    // U+00A0 (no-break space) maps to a space under SASLprep, on both sides.
    let (res, ok) = exchange(
        verifier("pass\u{a0}word"),
        "pass word",
        ChannelBinding::unrequested(),
    );
    assert!(res.is_ok() && ok);
    // A password SASLprep rejects (prohibited control char) is used raw.
    let (res, ok) = exchange(
        verifier("bad\u{7}pw"),
        "bad\u{7}pw",
        ChannelBinding::unrequested(),
    );
    assert!(res.is_ok() && ok);
}

#[test]
fn verifier_from_postgres_protocol() {
    for password in ["secret", "pass\u{a0}word", "ünïcödé", "bad\u{7}pw", ""] {
        let theirs = postgres_protocol::password::scram_sha_256(password.as_bytes());
        let parsed = ScramVerifier::parse(&theirs).expect("parse");
        assert_eq!(parsed.to_string(), theirs);
        assert_eq!(parsed.iterations, 4096);
        assert_eq!(parsed.salt.len(), 16);
        // Same salt → identical secret.
        let ours =
            ScramVerifier::from_password_with_salt(password, &parsed.salt, parsed.iterations);
        assert_eq!(ours.to_string(), theirs, "password {password:?}");
    }
    let theirs = postgres_protocol::password::scram_sha_256(b"hunter2");
    let (res, ok) = exchange(
        ScramVerifier::parse(&theirs).unwrap(),
        "hunter2",
        ChannelBinding::unrequested(),
    );
    assert!(res.is_ok() && ok);
}

#[test]
fn known_postgresql_verifier() {
    // Produced by postgres_protocol::password::scram_sha_256(b"pgsplit"), the format
    // PostgreSQL stores in pg_authid.rolpassword.
    const SECRET: &str = "SCRAM-SHA-256$4096:/9DLtx8ljuM1Fnaahcs0rw==$\
        9eLYN4qHslYcd0VtDMfAQaY3pzJePSVugiAHohzNqDY=:\
        iX+BgzkmjGmoCUhyLdiIk1GXyDXRzCHyxGehb1+1EK8=";
    let v = ScramVerifier::parse(SECRET).unwrap();
    assert_eq!(v.to_string(), SECRET);
    let ours = ScramVerifier::from_password_with_salt("pgsplit", &v.salt, 4096);
    assert_eq!(ours, v);
    let (res, ok) = exchange(v.clone(), "pgsplit", ChannelBinding::unsupported());
    assert!(res.is_ok() && ok);
    let (res, _) = exchange(v, "pgsplit ", ChannelBinding::unsupported());
    assert!(matches!(res, Err(AuthError::Failed)));
}

#[test]
fn from_password_is_random_and_usable() {
    let a = ScramVerifier::from_password("pw");
    let b = ScramVerifier::from_password("pw");
    assert_ne!(a.salt, b.salt);
    assert_eq!(a.iterations, 4096);
    assert_eq!(ScramVerifier::parse(&a.to_string()).unwrap(), a);
    let (res, ok) = exchange(a, "pw", ChannelBinding::unrequested());
    assert!(res.is_ok() && ok);
}

#[test]
fn debug_hides_keys() {
    let v = verifier("pw");
    let dbg = format!("{v:?}");
    assert!(!dbg.contains(&STANDARD.encode(v.stored_key)));
    assert!(!dbg.contains(&STANDARD.encode(v.server_key)));
}

#[test]
fn parse_rejects_malformed_secrets() {
    let good = verifier("pw").to_string();
    assert!(ScramVerifier::parse(&good).is_ok());
    let (head, keys) = good.rsplit_once('$').unwrap();
    let (sk, srv) = keys.split_once(':').unwrap();
    for bad in [
        String::new(),
        "md5abcdef".to_string(),
        "SCRAM-SHA-256$".to_string(),
        good.replacen("SCRAM-SHA-256$64", "SCRAM-SHA-256$0", 1),
        good.replacen("SCRAM-SHA-256$64", "SCRAM-SHA-256$-1", 1),
        good.replacen("SCRAM-SHA-256$64", "SCRAM-SHA-256$+64", 1),
        good.replacen("SCRAM-SHA-256$64", "SCRAM-SHA-256$99999999999", 1),
        good.replacen(':', ";", 1),
        format!("{head}${sk}"),
        format!("{head}${sk}:{}", &srv[..srv.len() - 4]),
        format!("{head}${sk}:!{}", &srv[1..]),
        format!("{head}$:{srv}"),
        "SCRAM-SHA-256$4096:$a:b".to_string(),
    ] {
        assert!(ScramVerifier::parse(&bad).is_err(), "accepted {bad:?}");
    }
}

/// Builds a client-final-message with a correct proof for `password`.
fn client_final_for(
    server_first: &[u8],
    client_first_bare: &str,
    gs2: &str,
    password: &str,
    v: &ScramVerifier,
) -> String {
    let sf = std::str::from_utf8(server_first).unwrap();
    let nonce = sf.strip_prefix("r=").unwrap().split(',').next().unwrap();
    let without_proof = format!("c={},r={nonce}", STANDARD.encode(gs2));
    let auth = format!("{client_first_bare},{sf},{without_proof}");
    let salted = hi(password.as_bytes(), &v.salt, v.iterations);
    let client_key = hmac(&salted, &[b"Client Key"]);
    let sig = hmac(&v.stored_key, &[auth.as_bytes()]);
    let proof: Vec<u8> = client_key.iter().zip(sig).map(|(a, b)| a ^ b).collect();
    format!("{without_proof},p={}", STANDARD.encode(proof))
}

#[test]
fn hand_built_exchange_with_extensions_and_username() {
    let v = verifier("pw");
    let mut s = ScramServer::new(v.clone());
    let bare = "n=someone,r=abc~DEF";
    let sf = s
        .client_first(SCRAM_SHA_256, format!("n,,{bare}").as_bytes())
        .unwrap();
    let sf_str = String::from_utf8(sf.clone()).unwrap();
    assert!(sf_str.starts_with("r=abc~DEF"));
    assert!(sf_str.ends_with(&format!(",s={},i=64", STANDARD.encode(&v.salt))));
    let cf = client_final_for(&sf, bare, "n,,", "pw", &v);
    let out = s.client_final(cf.as_bytes()).unwrap();
    assert!(out.starts_with(b"v="));
    // Out of order after success.
    assert!(matches!(
        s.client_final(cf.as_bytes()),
        Err(AuthError::Protocol(_))
    ));
    assert!(matches!(
        s.client_first(SCRAM_SHA_256, b"n,,n=,r=x"),
        Err(AuthError::Protocol(_))
    ));

    // Extensions in both messages are skipped but covered by the proof.
    let mut s = ScramServer::new(v.clone());
    let bare = "n=,r=abc,x=ext";
    let sf = s
        .client_first(SCRAM_SHA_256, format!("y,,{bare}").as_bytes())
        .unwrap();
    let sf = std::str::from_utf8(&sf).unwrap();
    let nonce = sf.strip_prefix("r=").unwrap().split(',').next().unwrap();
    let without_proof = format!("c=eSws,r={nonce},z=1");
    let auth = format!("{bare},{sf},{without_proof}");
    let salted = hi(b"pw", &v.salt, v.iterations);
    let ck = hmac(&salted, &[b"Client Key"]);
    let sig = hmac(&v.stored_key, &[auth.as_bytes()]);
    let p: Vec<u8> = ck.iter().zip(sig).map(|(a, b)| a ^ b).collect();
    let cf = format!("{without_proof},p={}", STANDARD.encode(p));
    assert!(s.client_final(cf.as_bytes()).is_ok());
}

fn err_of(r: Result<Vec<u8>, AuthError>) -> AuthError {
    r.expect_err("expected an error")
}

#[test]
fn mechanism_errors() {
    let v = verifier("pw");
    for mech in ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1", "", "scram-sha-256"] {
        let mut s = ScramServer::new(v.clone());
        let e = err_of(s.client_first(mech, b"n,,n=,r=abc"));
        assert!(matches!(e, AuthError::UnsupportedMechanism(_)), "{mech}");
        assert_eq!(e.sqlstate(), "28000");
    }
}

#[test]
fn malformed_client_first() {
    let v = verifier("pw");
    for bad in [
        &b""[..],
        b"n",
        b"n,",
        b"n,,",
        b"x,,n=,r=abc",
        b"p=tls-server-end-point,,n=,r=abc",
        b"n,a=admin,n=,r=abc",
        b"n,,m=ext,n=,r=abc",
        b"n,,r=abc",
        b"n,,n=",
        b"n,,n=,",
        b"n,,n=,r=",
        b"n,,n=,r=ab\x01c",
        b"n,,n=,r=ab\xffc",
        b"n,,n=,r=abc,",
        b"n,,n=,r=abc,=x",
        b"n,,n=,r=abc,1=x",
        b"n,,n=,r=abc,xyz",
        b"nn,,n=,r=abc",
        b"n;,n=,r=abc",
    ] {
        let mut s = ScramServer::new(v.clone());
        let e = err_of(s.client_first(SCRAM_SHA_256, bad));
        assert!(
            matches!(e, AuthError::Protocol(_)),
            "{:?} gave {e:?}",
            String::from_utf8_lossy(bad)
        );
        assert_eq!(e.sqlstate(), "08P01");
        // The exchange is over after an error.
        assert!(matches!(
            s.client_first(SCRAM_SHA_256, b"n,,n=,r=abc"),
            Err(AuthError::Protocol(_))
        ));
    }
}

#[test]
fn malformed_client_final() {
    let v = verifier("pw");
    let bare = "n=,r=clientnonce";
    let start = |gs2: &str| {
        let mut s = ScramServer::with_nonce(v.clone(), "SERVERNONCE".into());
        s.client_first(SCRAM_SHA_256, format!("{gs2}{bare}").as_bytes())
            .unwrap();
        s
    };
    let good = {
        let mut s = start("n,,");
        let sf = b"r=clientnonceSERVERNONCE,s=MDEyMzQ1Njc4OWFiY2RlZg==,i=64";
        let cf = client_final_for(sf, bare, "n,,", "pw", &v);
        let mut check = start("n,,");
        assert!(check.client_final(cf.as_bytes()).is_ok());
        assert!(s.client_final(cf.as_bytes()).is_ok());
        cf
    };
    let (head, proof) = good.split_once(",p=").unwrap();
    let nonce_attr = "r=clientnonceSERVERNONCE";
    let cases: Vec<String> = vec![
        String::new(),
        ",".into(),
        "c=biws".into(),
        format!("c=biws,{nonce_attr}"),
        format!("c=biws,{nonce_attr},"),
        format!("c=biws,{nonce_attr},p="),
        format!("c=biws,{nonce_attr},p=!!!!"),
        format!("c=biws,{nonce_attr},p=AAAA"),
        format!("{head},p={proof},x=1"),
        format!("{head},p={proof},"),
        format!("{nonce_attr},c=biws,p={proof}"),
        format!("c=eSws,{nonce_attr},p={proof}"), // "y,," but client sent "n,,"
        format!("c=bi@s,{nonce_attr},p={proof}"),
        format!("c=,{nonce_attr},p={proof}"),
        format!("c=biws,r=clientnonceSERVERNONCEX,p={proof}"),
        format!("c=biws,r=clientnonce,p={proof}"),
        format!("c=biws,r=,p={proof}"),
        format!("c=biws,{nonce_attr},1=x,p={proof}"),
    ];
    for bad in &cases {
        let mut s = start("n,,");
        let e = err_of(s.client_final(bad.as_bytes()));
        assert!(matches!(e, AuthError::Protocol(_)), "{bad:?} gave {e:?}");
    }
    // "n,," binding with a "y,," header.
    let mut s = start("y,,");
    let e = err_of(s.client_final(good.as_bytes()));
    assert!(matches!(e, AuthError::Protocol(_)));
    // client_final before client_first.
    let mut s = ScramServer::new(v.clone());
    assert!(matches!(
        s.client_final(good.as_bytes()),
        Err(AuthError::Protocol(_))
    ));
    // Flipped proof bit → Failed.
    let mut p = STANDARD.decode(proof).unwrap();
    p[0] ^= 1;
    let mut s = start("n,,");
    let e = err_of(s.client_final(format!("{head},p={}", STANDARD.encode(p)).as_bytes()));
    assert!(matches!(e, AuthError::Failed));
}

/// Tiny xorshift PRNG so the fuzz test is reproducible.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn random_input_never_panics() {
    let v = verifier("pw");
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let alphabet = b"npyacrsmx=,ABC+/0123456789\x00\xff\xc3";
    for i in 0..20_000 {
        let len = (xorshift(&mut seed) % 64) as usize;
        let random: Vec<u8> = (0..len)
            .map(|_| {
                let r = xorshift(&mut seed);
                if i % 2 == 0 {
                    r as u8
                } else {
                    alphabet[(r as usize) % alphabet.len()]
                }
            })
            .collect();
        let mut s = ScramServer::with_nonce(v.clone(), "SN".into());
        let _ = s.client_first(SCRAM_SHA_256, &random);
        let _ = s.client_final(&random);
        let mut s = ScramServer::with_nonce(v.clone(), "SN".into());
        s.client_first(SCRAM_SHA_256, b"n,,n=,r=c").unwrap();
        let mut msg = b"c=biws,r=cSN,".to_vec();
        msg.extend_from_slice(&random);
        let _ = s.client_final(&msg);
        let _ = ScramVerifier::parse(&String::from_utf8_lossy(&random));
    }
}

/// Channel binding data as pgsplit would derive it from its certificate (any bytes do here).
const END_POINT: &[u8] = b"0123456789abcdef0123456789abcdef";

fn plus_server() -> ScramServer {
    ScramServer::new(verifier("pw")).with_channel_binding(Some(END_POINT.to_vec()))
}

#[test]
fn plus_is_offered_only_with_binding_data() {
    assert_eq!(
        ScramServer::new(verifier("pw")).mechanisms(),
        [SCRAM_SHA_256]
    );
    assert_eq!(
        plus_server().mechanisms(),
        [SCRAM_SHA_256_PLUS, SCRAM_SHA_256]
    );
    // Without TLS, PLUS is an unknown mechanism.
    let mut server = ScramServer::new(verifier("pw"));
    let r = server.client_first(SCRAM_SHA_256_PLUS, b"p=tls-server-end-point,,n=,r=abc");
    assert!(matches!(r, Err(AuthError::UnsupportedMechanism(_))));
}

#[test]
fn plus_exchange_checks_the_binding_data() {
    for (data, accepted) in [(END_POINT.to_vec(), true), (b"other".to_vec(), false)] {
        let mut server = plus_server();
        let mut client = ScramSha256::new(b"pw", ChannelBinding::tls_server_end_point(data));
        let first = server
            .client_first(SCRAM_SHA_256_PLUS, client.message())
            .expect("client-first accepted");
        client.update(&first).expect("server-first");
        let verdict = server.client_final(client.message());
        assert_eq!(verdict.is_ok(), accepted, "{verdict:?}");
        if !accepted {
            let err = verdict.expect_err("refused");
            assert_eq!(err.sqlstate(), "28000", "{err}");
            assert!(
                err.to_string().contains("channel binding check failed"),
                "{err}"
            );
        }
    }
}

#[test]
fn binding_flags_that_do_not_fit_the_mechanism_are_refused() {
    // 'y': the client thinks pgsplit cannot bind, but PLUS was offered: a downgrade, refused.
    let err = plus_server()
        .client_first(SCRAM_SHA_256, b"y,,n=,r=abc")
        .expect_err("a downgrade");
    assert_eq!(err.sqlstate(), "28000", "{err}");
    assert!(err.to_string().contains("negotiation error"), "{err}");
    // 'y' is fine when PLUS was not offered, 'n' always with plain SCRAM-SHA-256.
    assert!(ScramServer::new(verifier("pw"))
        .client_first(SCRAM_SHA_256, b"y,,n=,r=abc")
        .is_ok());
    assert!(plus_server()
        .client_first(SCRAM_SHA_256, b"n,,n=,r=abc")
        .is_ok());
    // PLUS selected but no binding, or binding without PLUS, or another binding type.
    for (mechanism, message) in [
        (SCRAM_SHA_256_PLUS, &b"n,,n=,r=abc"[..]),
        (SCRAM_SHA_256, b"p=tls-server-end-point,,n=,r=abc"),
        (SCRAM_SHA_256_PLUS, b"p=tls-unique,,n=,r=abc"),
        (SCRAM_SHA_256_PLUS, b"p,,n=,r=abc"),
    ] {
        let r = plus_server().client_first(mechanism, message);
        assert!(
            matches!(r, Err(AuthError::Protocol(_))),
            "{mechanism} {message:?}: {r:?}"
        );
    }
}
