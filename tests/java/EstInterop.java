/*
 * p11escrow — interoperability with an EST client nobody here wrote:
 * Bouncy Castle's ESTService (tested with 1.72, Debian's libbcpkix-java),
 * driven by tests/integration/est_bc.sh.
 *
 *   java -cp DIR:bcprov.jar:bcpkix.jar:bcutil.jar EstInterop \
 *       --server 127.0.0.1:PORT --ca ca.pem --tls-cert tls.pem --transport transport.pem \
 *       --otp-file FILE --out DIR
 *
 * FILE (mode 0600; one-time passwords stay out of argv) has the lines
 * sign=NAME:PASSWORD (profile signing), keygen=NAME:PASSWORD and
 * cmc=NAME:PASSWORD (profile encryption).
 *
 * Trust: the CA certificate is the only trust anchor (BC's own PKIX trust
 * manager, which also checks the server certificate's key usage and EKU).
 * Host name: BC's JsseDefaultHostnameAuthorizer, as ESTService uses it by
 * default; it matches an IP address literal against iPAddress
 * subjectAltNames (InetAddress equality) and a name against dNSName ones,
 * so 127.0.0.1 is verified, not skipped (checked below, both ways).
 *
 * Steps (each prints "ok ..." or the program exits 1 with the reason):
 *   1. getCACerts: the CA certificate we were given.
 *   2. getCSRAttributes of the default label.
 *   3. simpleEnroll on "signing" (HTTP Basic, one-time password): a
 *      certificate for the CSR's key; simpleEnroll on the default label
 *      ("encryption", archival): 403 with the reason in the body.
 *   4. simpleEnrollWithServersideCreation on the default label: certificate
 *      and PKCS#8 key that belong together (DIR/keygen.pem, DIR/keygen.key).
 *   5. /fullcmc: a Full PKI Request built from BC's CMC/CMS classes (PKCS#10
 *      plus the key as PKCS#8 in an EnvelopedData to the transport
 *      certificate, in a SignedData of id-cct-PKIData signed by the enrollee
 *      key, identified by subject key identifier) over HttpsURLConnection with
 *      the same SSLContext (DIR/cmc.pem).
 *   6. Every one-time password again: refused with 401.
 */
import java.io.ByteArrayOutputStream;
import java.io.FileInputStream;
import java.io.FileWriter;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.io.Writer;
import java.math.BigInteger;
import java.net.InetAddress;
import java.net.URL;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.attribute.PosixFilePermissions;
import java.security.KeyPair;
import java.security.KeyPairGenerator;
import java.security.PrivateKey;
import java.security.PublicKey;
import java.security.SecureRandom;
import java.security.Security;
import java.security.Signature;
import java.security.cert.CertificateFactory;
import java.security.cert.TrustAnchor;
import java.security.cert.X509Certificate;
import java.security.interfaces.ECPublicKey;
import java.security.spec.ECGenParameterSpec;
import java.util.Base64;
import java.util.Collection;
import java.util.Collections;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

import javax.net.ssl.HttpsURLConnection;
import javax.net.ssl.SSLContext;
import javax.net.ssl.SSLSocketFactory;
import javax.net.ssl.X509TrustManager;
import javax.security.auth.x500.X500Principal;

import org.bouncycastle.asn1.ASN1ObjectIdentifier;
import org.bouncycastle.asn1.cmc.BodyPartID;
import org.bouncycastle.asn1.cmc.CMCObjectIdentifiers;
import org.bouncycastle.asn1.cmc.CertificationRequest;
import org.bouncycastle.asn1.cmc.OtherMsg;
import org.bouncycastle.asn1.cmc.PKIData;
import org.bouncycastle.asn1.cmc.TaggedAttribute;
import org.bouncycastle.asn1.cmc.TaggedCertificationRequest;
import org.bouncycastle.asn1.cmc.TaggedContentInfo;
import org.bouncycastle.asn1.cmc.TaggedRequest;
import org.bouncycastle.asn1.cms.ContentInfo;
import org.bouncycastle.asn1.pkcs.PrivateKeyInfo;
import org.bouncycastle.asn1.x9.X9ObjectIdentifiers;
import org.bouncycastle.cert.X509CertificateHolder;
import org.bouncycastle.cert.jcajce.JcaX509CertificateConverter;
import org.bouncycastle.cert.jcajce.JcaX509ExtensionUtils;
import org.bouncycastle.cmc.SimplePKIResponse;
import org.bouncycastle.cms.CMSAlgorithm;
import org.bouncycastle.cms.CMSEnvelopedData;
import org.bouncycastle.cms.CMSEnvelopedDataGenerator;
import org.bouncycastle.cms.CMSProcessableByteArray;
import org.bouncycastle.cms.CMSSignedData;
import org.bouncycastle.cms.CMSSignedDataGenerator;
import org.bouncycastle.cms.jcajce.JceCMSContentEncryptorBuilder;
import org.bouncycastle.cms.jcajce.JceKeyAgreeRecipientInfoGenerator;
import org.bouncycastle.cms.jcajce.JcaSignerInfoGeneratorBuilder;
import org.bouncycastle.est.CACertsResponse;
import org.bouncycastle.est.CSRAttributesResponse;
import org.bouncycastle.est.CSRRequestResponse;
import org.bouncycastle.est.ESTException;
import org.bouncycastle.est.ESTService;
import org.bouncycastle.est.EnrollmentResponse;
import org.bouncycastle.est.HttpAuth;
import org.bouncycastle.est.jcajce.JcaJceUtils;
import org.bouncycastle.est.jcajce.JsseDefaultHostnameAuthorizer;
import org.bouncycastle.est.jcajce.JsseESTServiceBuilder;
import org.bouncycastle.est.jcajce.SSLSocketFactoryCreator;
import org.bouncycastle.jce.provider.BouncyCastleProvider;
import org.bouncycastle.openssl.jcajce.JcaPEMKeyConverter;
import org.bouncycastle.openssl.jcajce.JcaPEMWriter;
import org.bouncycastle.operator.ContentSigner;
import org.bouncycastle.operator.jcajce.JcaContentSignerBuilder;
import org.bouncycastle.operator.jcajce.JcaContentVerifierProviderBuilder;
import org.bouncycastle.operator.jcajce.JcaDigestCalculatorProviderBuilder;
import org.bouncycastle.pkcs.PKCS10CertificationRequest;
import org.bouncycastle.pkcs.jcajce.JcaPKCS10CertificationRequestBuilder;
import org.bouncycastle.util.io.pem.PemObject;

public final class EstInterop {
	private static final ASN1ObjectIdentifier ECDSA_SHA256 = X9ObjectIdentifiers.ecdsa_with_SHA256;
	private static final ASN1ObjectIdentifier EC_PUBLIC_KEY = X9ObjectIdentifiers.id_ecPublicKey;

	private final Map<String, String> opt;
	private final X509Certificate ca;
	private final SSLContext tls;
	private final X509TrustManager[] trust;
	private final JsseDefaultHostnameAuthorizer hostAuth = new JsseDefaultHostnameAuthorizer(Collections.emptySet());
	private final Path out;

	private EstInterop(Map<String, String> opt) throws Exception {
		this.opt = opt;
		this.ca = readCert(need("ca"));
		this.out = Paths.get(need("out"));
		/* BC's EST trust manager: PKIX to the one anchor, plus RFC 7030's server certificate usage checks. */
		this.trust = JcaJceUtils.getCertPathTrustManager(Collections.singleton(new TrustAnchor(ca, null)), null);
		this.tls = SSLContext.getInstance("TLS");
		this.tls.init(null, trust, new SecureRandom());
	}

	public static void main(String[] args) {
		Security.addProvider(new BouncyCastleProvider());
		try {
			new EstInterop(parseArgs(args)).run();
			System.out.println("ok all");
		} catch (Throwable t) {
			System.err.println("FAIL: " + describe(t));
			t.printStackTrace();
			System.exit(1);
		}
	}

	private void run() throws Exception {
		String server = need("server");
		String host = server.substring(0, server.lastIndexOf(':'));
		Map<String, String> otps = new HashMap<>();
		for (String line : Files.readAllLines(Paths.get(need("otp-file")), StandardCharsets.UTF_8)) {
			int eq = line.indexOf('=');
			if (eq > 0)
				otps.put(line.substring(0, eq).trim(), line.substring(eq + 1).trim());
		}
		String[] sign = otp(otps, "sign"), keygen = otp(otps, "keygen"), cmc = otp(otps, "cmc");

		System.out.println("ok client: " + Security.getProvider("BC").getInfo() + ", Java " + System.getProperty("java.version"));
		checkHostnameAuthorizer(host);
		ESTService est = service(server, null);
		ESTService signing = service(server, "signing");

		/* 1. /cacerts */
		CACertsResponse cacerts = est.getCACerts();
		check(cacerts.isTrusted(), "getCACerts: the response is not marked trusted");
		check(cacerts.hasCertificates(), "getCACerts: no certificates");
		X509CertificateHolder[] got = ESTService.storeToArray(cacerts.getCertificateStore());
		X509CertificateHolder caHolder = new X509CertificateHolder(ca.getEncoded());
		boolean found = false;
		for (X509CertificateHolder h : got)
			found |= h.equals(caHolder);
		check(found, "getCACerts: the CA certificate we were given is not among the " + got.length + " returned");
		writePem(out.resolve("cacerts.pem"), got);
		System.out.println("ok cacerts: " + got.length + " certificate(s), the CA certificate among them");

		/* 2. /csrattrs */
		CSRRequestResponse attrs = est.getCSRAttributes();
		check(attrs.hasAttributesResponse(), "getCSRAttributes: no attributes");
		CSRAttributesResponse ar = attrs.getAttributesResponse();
		Collection<ASN1ObjectIdentifier> req = ar.getRequirements();
		check(ar.hasRequirement(ECDSA_SHA256), "getCSRAttributes: no ecdsa-with-SHA256 in " + req);
		check(ar.isAttribute(EC_PUBLIC_KEY), "getCSRAttributes: no id-ecPublicKey attribute in " + req);
		System.out.println("ok csrattrs: " + req);

		/* 3. /simpleenroll: a signing certificate; the archival profile refuses. */
		KeyPair signKey = ecKeyPair();
		PKCS10CertificationRequest signCsr = csr(signKey, "CN=BC Interop Signing");
		EnrollmentResponse er = signing.simpleEnroll(false, signCsr, auth(sign));
		check(er.isCompleted(), "simpleEnroll(signing): not completed (status 202?)");
		X509CertificateHolder signCert = issued(er.getStore().getMatches(null), signCsr, "simpleEnroll(signing)");
		writePem(out.resolve("sign.pem"), new X509CertificateHolder[] {signCert});
		System.out.println("ok simpleenroll signing: serial " + hex(signCert.getSerialNumber()) + " for the CSR's key");

		try {
			est.simpleEnroll(false, csr(ecKeyPair(), "CN=BC Interop"), auth(keygen));
			throw new IllegalStateException("simpleEnroll on the archival profile was accepted");
		} catch (ESTException e) {
			String body = body(e);
			check(e.getStatusCode() == 403, "simpleEnroll(encryption): status " + e.getStatusCode() + ", expected 403: " + describe(e));
			check(body.contains("requires key archival"), "simpleEnroll(encryption): 403 without the reason: '" + body + "'");
			System.out.println("ok simpleenroll encryption refused: 403 " + body.trim());
		}

		/* 4. /serverkeygen */
		PKCS10CertificationRequest kgCsr = csr(ecKeyPair(), "CN=BC Interop Keygen");
		EnrollmentResponse kr = est.simpleEnrollWithServersideCreation(kgCsr, auth(keygen));
		check(kr.isCompleted(), "simpleEnrollWithServersideCreation: not completed");
		PrivateKeyInfo pki = kr.getPrivateKeyInfo();
		check(pki != null, "simpleEnrollWithServersideCreation: no private key");
		Collection<X509CertificateHolder> kcerts = kr.getStore().getMatches(null);
		check(kcerts.size() == 1, "simpleEnrollWithServersideCreation: " + kcerts.size() + " certificates");
		X509CertificateHolder kgCert = kcerts.iterator().next();
		verifyIssued(kgCert, "simpleEnrollWithServersideCreation");
		check(!kgCert.getSubjectPublicKeyInfo().equals(kgCsr.getSubjectPublicKeyInfo()),
		      "serverkeygen: the certificate is for the CSR's key, not a generated one");
		check(kgCert.getSubjectPublicKeyInfo().getAlgorithm().getAlgorithm().equals(EC_PUBLIC_KEY),
		      "serverkeygen: the generated key is not EC");
		PrivateKey kgPriv = new JcaPEMKeyConverter().setProvider("BC").getPrivateKey(pki);
		PublicKey kgPub = new JcaX509CertificateConverter().setProvider("BC").getCertificate(kgCert).getPublicKey();
		check(keysMatch(kgPriv, kgPub), "serverkeygen: the private key does not belong to the certificate");
		writePem(out.resolve("keygen.pem"), new X509CertificateHolder[] {kgCert});
		writeKey(out.resolve("keygen.key"), pki.getEncoded());
		System.out.println("ok serverkeygen: serial " + hex(kgCert.getSerialNumber()) + ", PKCS#8 key matches");

		/* 5. /fullcmc */
		X509Certificate transport = readCert(need("transport"));
		KeyPair cmcKey = ecKeyPair();
		PKCS10CertificationRequest cmcCsr = csr(cmcKey, "CN=BC Interop CMC");
		byte[] cmcReq = fullPkiRequest(cmcCsr, cmcKey, transport);
		X509CertificateHolder cmcCert = postFullCmc(server, cmcReq, cmc, cmcCsr);
		writePem(out.resolve("cmc.pem"), new X509CertificateHolder[] {cmcCert});
		System.out.println("ok fullcmc: serial " + hex(cmcCert.getSerialNumber()) + " for the CSR's key");

		/* 6. One-time passwords work once. */
		try {
			signing.simpleEnroll(false, csr(ecKeyPair(), "CN=BC Interop Again"), auth(sign));
			throw new IllegalStateException("a used one-time password was accepted again");
		} catch (ESTException e) {
			check(e.getStatusCode() == 401, "reused password: status " + e.getStatusCode() + ", expected 401: " + describe(e));
			System.out.println("ok reuse refused: 401 " + body(e).trim());
		}
		try {
			est.simpleEnrollWithServersideCreation(csr(ecKeyPair(), "CN=BC Interop Again"), auth(keygen));
			throw new IllegalStateException("a used one-time password was accepted again (serverkeygen)");
		} catch (ESTException e) {
			check(e.getStatusCode() == 401, "reused password (serverkeygen): status " + e.getStatusCode() + ": " + describe(e));
			System.out.println("ok reuse refused (serverkeygen): 401");
		}
		HttpsURLConnection again = fullCmcConnection(server, cmc, fullPkiRequest(cmcCsr, cmcKey, transport));
		check(again.getResponseCode() == 401, "reused password (fullcmc): status " + again.getResponseCode());
		String reason = new String(readAll(again.getErrorStream()), StandardCharsets.UTF_8).trim();
		check(!reason.isEmpty(), "reused password (fullcmc): 401 without a reason");
		System.out.println("ok reuse refused (fullcmc): 401 " + reason);
	}

	/* BC's default host name authorizer, shown to verify the service certificate for host and nothing else. */
	private void checkHostnameAuthorizer(String host) throws Exception {
		X509Certificate tlsCert = readCert(need("tls-cert"));
		boolean ipSan = false;
		for (List<?> san : tlsCert.getSubjectAlternativeNames()) {
			if (((Number)san.get(0)).intValue() == 7 &&
			    InetAddress.getByName(san.get(1).toString()).equals(InetAddress.getByName(host)))
				ipSan = true;
		}
		check(ipSan, "the service certificate has no iPAddress subjectAltName " + host + ": "
			     + tlsCert.getSubjectAlternativeNames());
		check(hostAuth.verify(host, tlsCert), "JsseDefaultHostnameAuthorizer refuses " + host);
		check(!hostAuth.verify("127.0.0.2", tlsCert), "JsseDefaultHostnameAuthorizer accepts 127.0.0.2");
		System.out.println("ok host name: " + host + " matches the iPAddress subjectAltName, 127.0.0.2 does not");
	}

	private ESTService service(String server, String label) {
		final X509TrustManager[] tms = trust;
		SSLSocketFactoryCreator sockets = new SSLSocketFactoryCreator() {
			public SSLSocketFactory createFactory() {
				return tls.getSocketFactory();
			}

			public boolean isTrusted() {
				return tms[0].getAcceptedIssuers().length > 0;
			}
		};
		JsseESTServiceBuilder b = new JsseESTServiceBuilder(server, sockets);
		b.withHostNameAuthorizer(hostAuth);
		b.withTimeout(60000);
		if (label != null)
			b.withLabel(label);
		return b.build();
	}

	/*
	 * A Full PKI Request (RFC 5272) as p11escrow's est.h describes it: SignedData
	 * { id-cct-PKIData, PKIData { {}, { tcr [0] { 1, PKCS#10 } },
	 * { { 2, EnvelopedData(PKCS#8) to the transport certificate } }, {} } },
	 * signed with the enrollee key (RFC 5272 3.2.1.2: identified by subject key id).
	 */
	private static byte[] fullPkiRequest(PKCS10CertificationRequest csr, KeyPair key, X509Certificate transport) throws Exception {
		byte[] pkcs8 = PrivateKeyInfo.getInstance(key.getPrivate().getEncoded()).getEncoded("DER");
		CMSEnvelopedDataGenerator eg = new CMSEnvelopedDataGenerator();
		if (!(transport.getPublicKey() instanceof ECPublicKey))
			throw new IllegalStateException("the transport key is not EC: this client does ECDH (setup's default, EC P-256) only");
		KeyPairGenerator kpg = KeyPairGenerator.getInstance("EC", "BC");
		kpg.initialize(((ECPublicKey)transport.getPublicKey()).getParams(), new SecureRandom());
		KeyPair eph = kpg.generateKeyPair();
		JceKeyAgreeRecipientInfoGenerator kari = new JceKeyAgreeRecipientInfoGenerator(
			CMSAlgorithm.ECDH_SHA256KDF, eph.getPrivate(), eph.getPublic(), CMSAlgorithm.AES256_WRAP);
		kari.addRecipient(transport);
		eg.addRecipientInfoGenerator(kari.setProvider("BC"));
		CMSEnvelopedData env = eg.generate(new CMSProcessableByteArray(pkcs8),
			new JceCMSContentEncryptorBuilder(CMSAlgorithm.AES256_CBC).setProvider("BC").build());
		java.util.Arrays.fill(pkcs8, (byte)0);

		PKIData pkiData = new PKIData(
			new TaggedAttribute[0],
			new TaggedRequest[] {new TaggedRequest(new TaggedCertificationRequest(new BodyPartID(1),
				CertificationRequest.getInstance(csr.getEncoded())))},
			new TaggedContentInfo[] {new TaggedContentInfo(new BodyPartID(2), env.toASN1Structure())},
			new OtherMsg[0]);

		CMSSignedDataGenerator sg = new CMSSignedDataGenerator();
		ContentSigner signer = new JcaContentSignerBuilder("SHA256withECDSA").setProvider("BC").build(key.getPrivate());
		byte[] ski = new JcaX509ExtensionUtils().createSubjectKeyIdentifier(key.getPublic()).getKeyIdentifier();
		sg.addSignerInfoGenerator(new JcaSignerInfoGeneratorBuilder(
			new JcaDigestCalculatorProviderBuilder().setProvider("BC").build()).build(signer, ski));
		CMSSignedData sd = sg.generate(new CMSProcessableByteArray(CMCObjectIdentifiers.id_cct_PKIData, pkiData.getEncoded()), true);
		return sd.getEncoded();
	}

	private HttpsURLConnection fullCmcConnection(String server, String[] otp, byte[] request) throws Exception {
		HttpsURLConnection c = (HttpsURLConnection)new URL("https://" + server + "/.well-known/est/fullcmc").openConnection();
		c.setSSLSocketFactory(tls.getSocketFactory());
		/* HttpsURLConnection's own RFC 2818 check stays on: an IP literal needs an iPAddress subjectAltName. */
		c.setConnectTimeout(60000);
		c.setReadTimeout(60000);
		c.setRequestMethod("POST");
		c.setDoOutput(true);
		c.setRequestProperty("Content-Type", "application/pkcs7-mime; smime-type=CMC-request");
		c.setRequestProperty("Content-Transfer-Encoding", "base64");
		c.setRequestProperty("Authorization", "Basic " + Base64.getEncoder().encodeToString(
			(otp[0] + ":" + otp[1]).getBytes(StandardCharsets.UTF_8)));
		byte[] body = Base64.getMimeEncoder(64, "\r\n".getBytes(StandardCharsets.US_ASCII)).encode(request);
		/* Not in streaming mode: then HttpURLConnection keeps a 401's body (getErrorStream). */
		try (OutputStream os = c.getOutputStream()) {
			os.write(body);
		}
		return c;
	}

	private X509CertificateHolder postFullCmc(String server, byte[] request, String[] otp, PKCS10CertificationRequest csr) throws Exception {
		HttpsURLConnection c = fullCmcConnection(server, otp, request);
		int code = c.getResponseCode();
		if (code != 200)
			throw new IllegalStateException("fullcmc: HTTP " + code + ": "
				+ new String(readAll(c.getErrorStream()), StandardCharsets.UTF_8).trim());
		String ct = c.getContentType();
		check(ct != null && ct.toLowerCase().startsWith("application/pkcs7-mime") &&
		      ct.toLowerCase().contains("smime-type=cmc-response"), "fullcmc: Content-Type " + ct);
		byte[] b64 = readAll(c.getInputStream());
		/* RFC 8951: the body is base64 whatever Content-Transfer-Encoding says; line breaks allowed. */
		byte[] der = Base64.getMimeDecoder().decode(b64);
		SimplePKIResponse resp = new SimplePKIResponse(ContentInfo.getInstance(der));
		return issued(resp.getCertificates().getMatches(null), csr, "fullcmc");
	}

	/* The one certificate in certs for the CSR's key, issued by the CA. */
	private X509CertificateHolder issued(Collection<X509CertificateHolder> certs, PKCS10CertificationRequest csr, String what)
		throws Exception {
		X509CertificateHolder mine = null;
		for (X509CertificateHolder h : certs) {
			if (h.getSubjectPublicKeyInfo().equals(csr.getSubjectPublicKeyInfo())) {
				check(mine == null, what + ": two certificates for the CSR's key");
				mine = h;
			}
		}
		check(mine != null, what + ": none of the " + certs.size() + " certificate(s) is for the CSR's key");
		verifyIssued(mine, what);
		return mine;
	}

	private void verifyIssued(X509CertificateHolder h, String what) throws Exception {
		check(h.getIssuer().equals(new X509CertificateHolder(ca.getEncoded()).getSubject()), what + ": issuer is " + h.getIssuer());
		check(h.isSignatureValid(new JcaContentVerifierProviderBuilder().setProvider("BC").build(ca)),
		      what + ": the CA's signature does not verify");
		check(h.isValidOn(new java.util.Date()), what + ": not valid now");
	}

	private static boolean keysMatch(PrivateKey priv, PublicKey pub) throws Exception {
		String alg = priv.getAlgorithm().startsWith("EC") ? "SHA256withECDSA" : "SHA256withRSA";
		byte[] data = new byte[64];
		new SecureRandom().nextBytes(data);
		Signature s = Signature.getInstance(alg, "BC");
		s.initSign(priv);
		s.update(data);
		byte[] sig = s.sign();
		Signature v = Signature.getInstance(alg, "BC");
		v.initVerify(pub);
		v.update(data);
		return v.verify(sig);
	}

	private static KeyPair ecKeyPair() throws Exception {
		KeyPairGenerator kpg = KeyPairGenerator.getInstance("EC", "BC");
		kpg.initialize(new ECGenParameterSpec("P-256"), new SecureRandom());
		return kpg.generateKeyPair();
	}

	private static PKCS10CertificationRequest csr(KeyPair kp, String subject) throws Exception {
		ContentSigner signer = new JcaContentSignerBuilder("SHA256withECDSA").setProvider("BC").build(kp.getPrivate());
		return new JcaPKCS10CertificationRequestBuilder(new X500Principal(subject), kp.getPublic()).build(signer);
	}

	private static HttpAuth auth(String[] otp) {
		return new HttpAuth(otp[0], otp[1].toCharArray());
	}

	private static String body(ESTException e) throws IOException {
		return new String(readAll(e.getBody()), StandardCharsets.UTF_8);
	}

	private static String describe(Throwable t) {
		StringBuilder sb = new StringBuilder(String.valueOf(t));
		for (Throwable c = t.getCause(); c != null && c != t; t = c, c = c.getCause())
			sb.append(" <- ").append(c);
		return sb.toString();
	}

	private static byte[] readAll(InputStream in) throws IOException {
		if (in == null)
			return new byte[0];
		try (InputStream i = in) {
			ByteArrayOutputStream bos = new ByteArrayOutputStream();
			byte[] buf = new byte[4096];
			int n;
			while ((n = i.read(buf)) >= 0)
				bos.write(buf, 0, n);
			return bos.toByteArray();
		}
	}

	private static X509Certificate readCert(String file) throws Exception {
		try (InputStream in = new FileInputStream(file)) {
			return (X509Certificate)CertificateFactory.getInstance("X.509").generateCertificate(in);
		}
	}

	private static void writePem(Path p, X509CertificateHolder[] certs) throws IOException {
		try (JcaPEMWriter w = new JcaPEMWriter(new FileWriter(p.toFile()))) {
			for (X509CertificateHolder h : certs)
				w.writeObject(new PemObject("CERTIFICATE", h.getEncoded()));
		}
	}

	private static void writeKey(Path p, byte[] pkcs8) throws IOException {
		Files.deleteIfExists(p);
		Files.createFile(p, PosixFilePermissions.asFileAttribute(PosixFilePermissions.fromString("rw-------")));
		try (Writer fw = new FileWriter(p.toFile()); JcaPEMWriter w = new JcaPEMWriter(fw)) {
			w.writeObject(new PemObject("PRIVATE KEY", pkcs8));
		}
	}

	private static String hex(BigInteger serial) {
		return serial.toString(16);
	}

	private String need(String name) {
		String v = opt.get(name);
		if (v == null || v.isEmpty())
			throw new IllegalArgumentException("missing --" + name);
		return v;
	}

	private static String[] otp(Map<String, String> otps, String name) {
		String v = otps.getOrDefault(name, "");
		int colon = v.indexOf(':');
		if (colon <= 0)
			throw new IllegalArgumentException("the OTP file has no line " + name + "=NAME:PASSWORD");
		return new String[] {v.substring(0, colon), v.substring(colon + 1)};
	}

	private static void check(boolean cond, String what) {
		if (!cond)
			throw new IllegalStateException(what);
	}

	private static Map<String, String> parseArgs(String[] args) {
		Map<String, String> m = new HashMap<>();
		for (int i = 0; i < args.length; i++) {
			if (!args[i].startsWith("--") || i + 1 >= args.length)
				throw new IllegalArgumentException("usage: EstInterop --server HOST:PORT --ca PEM --tls-cert PEM "
					+ "--transport PEM --otp-file FILE --out DIR");
			m.put(args[i].substring(2), args[++i]);
		}
		return m;
	}
}
