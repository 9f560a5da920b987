'use strict';
'require view';
'require form';
'require uci';

/* Configuration of wgrouter: /etc/config/wgrouter through LuCI's form API.
 * "Save & Apply" has rpcd's uci apply commit the file and send procd the
 * config.change event of package wgrouter, on which the init script's
 * reload trigger (procd_add_reload_trigger wgrouter) reloads the daemon.
 *
 * Each field refuses what the daemon refuses, with the daemon's own words
 * (wgrouter/config.py, the part after "option 'NAME': "):
 * tests/test_luci_config.py gives every rule below the same values as the
 * daemon's loader and wants the same verdict and the same message. */

/* `config wgrouter 'main'`: model.Settings with config.py's SPEC (the init
 * script's validate_data type) and _SETTING_RANGES (the daemon's bounds):
 * option: [ type, default, minimum, minimum allowed, maximum ] */
var SETTINGS = {
	check_interval:    [ 'ufloat', '1.5', 0, false, null ],
	handshake_timeout: [ 'ufloat', '150', 0, false, null ],
	probe_timeout:     [ 'ufloat', '1', 0, false, null ],
	failback_holddown: [ 'ufloat', '60', 0, true, null ],
	holddown_max:      [ 'ufloat', '300', 0, true, null ],
	backoff_base:      [ 'ufloat', '2', 0, false, null ],
	backoff_max:       [ 'ufloat', '300', 0, false, null ],
	dns_ttl_min:       [ 'ufloat', '30', 0, true, null ],
	dns_ttl_max:       [ 'ufloat', '3600', 0, false, null ],
	events:            [ 'uinteger', '64', 1, true, 1024 ]
};

/* config.py's DATATYPES: what validate_data's type takes */
var TYPE_TEXT = {
	uinteger: _('an unsigned integer (decimal, 0x hex or 0 octal; no sign or blank)'),
	ufloat: _('a number of at least 0 (e.g. 2.5)')
};

/* config.py: a uinteger without a maximum of its own stays in a C int */
var UINT_MAX_DEFAULT = 2147483647;

/* config.py _dt_ufloat: above -1 and below 2^31, as validate_data's int
 * conversion of the double takes it */
var UFLOAT_LIMIT = 2147483648;

/* "%d" for a whole number, else the number, as config.py's _number */
function num(n) {
	return (n === Math.floor(n) && isFinite(n)) ? n.toFixed(0) : String(n);
}

function quote(value) {
	return "'" + value + "'";
}

/* validate_data's uinteger (config.py _dt_uinteger): strtoul base 0, no
 * blank and no sign first; null where it refuses the value */
function dtUinteger(text) {
	var m = /^(?:(0[xX][0-9a-fA-F]+)|(0[0-7]*)|([1-9][0-9]*))$/.exec(text);

	if (!m)
		return null;
	if (m[1])
		return parseInt(m[1].substring(2), 16);
	if (m[2])
		return parseInt(m[2], 8);
	return parseInt(m[3], 10);
}

/* a C99 hexadecimal floating constant's value, sign excluded */
function hexFloat(text) {
	var m = /^0[xX]([0-9a-fA-F]*)(?:\.([0-9a-fA-F]*))?(?:[pP]([+-]?[0-9]+))?$/.exec(text),
	    digits = m[1] + (m[2] || ''),
	    value = digits.length ? parseInt(digits, 16) : 0;

	return value * Math.pow(2, (m[3] ? parseInt(m[3], 10) : 0) - 4 * (m[2] || '').length);
}

/* validate_data's ufloat (config.py _dt_ufloat): strtod must take the whole
 * value; null where it refuses it */
function dtUfloat(text) {
	var body = text.replace(/^[ \t\n\v\f\r]+/, ''),
	    m = /^([+-]?)(?:((?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)|(0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)(?:[pP][+-]?[0-9]+)?)|(inf|infinity|nan(?:\([0-9A-Za-z_]*\))?))$/i.exec(body),
	    value;

	if (!m || m[4])
		return null;  /* inf and nan are out of range */
	value = m[2] ? Number(m[2]) : hexFloat(m[3]);
	if (m[1] == '-')
		value = -value;
	return (value > -1 && value < UFLOAT_LIMIT) ? value : null;
}

/* config.py _Options.bounded */
function bounded(text, value, low, lowOk, high) {
	var ok = isFinite(value) && (lowOk ? value >= low : value > low),
	    bound;

	if (ok && high != null)
		ok = value <= high;
	if (ok)
		return true;
	bound = (lowOk ? _('at least %s') : _('greater than %s')).format(num(low));
	if (high != null)
		bound += ' ' + _('and at most %s').format(num(high));
	return _('%s is not a number %s').format(quote(text), bound);
}

/* config.py _Options.setting: the init script's type, then the daemon's bounds */
function setting(text, rule) {
	var kind = rule[0], low = rule[2], lowOk = rule[3], high = rule[4], value;

	value = (kind == 'uinteger') ? dtUinteger(text) : dtUfloat(text);
	if (value == null)
		return _('%s is not %s').format(quote(text), TYPE_TEXT[kind]);
	if (kind == 'uinteger') {
		high = (high == null) ? UINT_MAX_DEFAULT : high;
		return (value >= low && value <= high) ? true
			: _('%s is not an integer between %d and %d').format(quote(text), low, high);
	}
	return bounded(text, value, low, lowOk, high);
}

/* config.py _Options.integer: a decimal integer, blanks around allowed */
function integer(text, low, high) {
	var t = text.trim();

	if (/^[+-]?[0-9]+$/.test(t) && +t >= low && +t <= high)
		return true;
	return _('%s is not an integer between %d and %d').format(quote(text), low, high);
}

/* config.py _Options.number (and its _FLOAT) */
function number(text, low, lowOk) {
	var t = text.trim(),
	    value = /^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$/.test(t) ? Number(t) : NaN;

	return bounded(text, value, low, lowOk, null);
}

/* Python's ipaddress.IPv4Address: four decimal octets, no leading zero */
function isIPv4(text) {
	var octets = text.split('.');

	return octets.length == 4 && octets.every(function(o) {
		return /^[0-9]{1,3}$/.test(o) && +o <= 255 && (o.length == 1 || o.charAt(0) != '0');
	});
}

/* Python's ipaddress.IPv6Address, a %scope included */
function isIPv6(text) {
	var at = text.indexOf('%'), parts, skip = -1, hi, lo, i;

	if (at >= 0) {
		var scope = text.substring(at + 1);
		if (!scope.length || scope.indexOf('%') >= 0)
			return false;
		text = text.substring(0, at);
	}
	parts = text.split(':');
	if (parts.length < 3)
		return false;
	if (parts[parts.length - 1].indexOf('.') >= 0) {
		if (!isIPv4(parts[parts.length - 1]))
			return false;
		parts.splice(parts.length - 1, 1, '0', '0');
	}
	if (parts.length > 9)
		return false;
	for (i = 1; i < parts.length - 1; i++) {
		if (parts[i] !== '')
			continue;
		if (skip >= 0)
			return false;  /* at most one '::' */
		skip = i;
	}
	if (skip >= 0) {
		hi = skip;
		lo = parts.length - skip - 1;
		if (parts[0] === '' && --hi)
			return false;
		if (parts[parts.length - 1] === '' && --lo)
			return false;
		if (8 - (hi + lo) < 1)
			return false;
	}
	else if (parts.length != 8 || parts[0] === '' || parts[parts.length - 1] === '') {
		return false;
	}
	return parts.every(function(p, j) {
		return (p === '' && (j == skip || (skip >= 0 && (j == 0 || j == parts.length - 1))))
			|| /^[0-9a-fA-F]{1,4}$/.test(p);
	});
}

function isIP(text, family) {
	if (family == 4)
		return isIPv4(text);
	if (family == 6)
		return isIPv6(text);
	return isIPv4(text) || isIPv6(text);
}

/* config.py is_hostname: dotted numbers that are no IPv4 address are no name */
function isHostname(text) {
	var name = text.replace(/\.$/, '');

	if (/^[0-9.]+$/.test(text) || !name.length || name.length > 253)
		return false;
	return name.split('.').every(function(label) {
		return /^[A-Za-z0-9_-]{1,63}$/.test(label) && label.charAt(0) != '-'
			&& label.charAt(label.length - 1) != '-';
	});
}

/* config.py parse_endpoint's messages: "host", "host:port", "[v6]:port" */
function endpointError(text) {
	var host, port = null, close, rest;

	if (text.charAt(0) == '[') {
		close = text.indexOf(']');
		if (close < 0)
			return _("is missing the closing ']'");
		host = text.substring(1, close);
		rest = text.substring(close + 1);
		if (rest.length) {
			if (rest.charAt(0) != ':')
				return _("has text after ']' that is not ':port'");
			port = rest.substring(1);
		}
		if (!isIPv6(host))
			return _("has no IPv6 address inside '[...]'");
	}
	else if (text.split(':').length > 2) {
		if (isIPv6(text))
			return _('is an IPv6 address without a port: write it as [address]:port');
		return _('is not host:port');
	}
	else {
		close = text.indexOf(':');
		host = (close < 0) ? text : text.substring(0, close);
		port = (close < 0) ? null : text.substring(close + 1);
		if (!(isIPv4(host) || isHostname(host)))
			return _('is not a host name or IP address with an optional :port');
	}
	if (port != null && !(/^[+-]?[0-9]+$/.test(port) && +port >= 1 && +port <= 65535))
		return _('has a port that is not between 1 and 65535');
	return null;
}

/* LuCI asks validate() about an empty field too (validation.js
 * Validator.validate calls the option's function after the empty check);
 * an empty field removes the option on save, which leaves the daemon's
 * default, so it is valid */
function optional(check) {
	return function(section_id, value) {
		return (value == null || value === '') ? true : check.apply(this, arguments);
	};
}

/* A list option's words: config.py _Options.words splits each item at blanks */
function words(value) {
	return [].concat(value == null ? [] : value).join(' ').split(/\s+/).filter(function(w) {
		return w.length;
	});
}

/* every word passes check(word), which gives true or the message */
function eachWord(check) {
	return function(section_id, value) {
		var list = words(value), i, verdict;

		for (i = 0; i < list.length; i++)
			if ((verdict = check(list[i])) !== true)
				return verdict;
		return true;
	};
}

function ipRule(family) {
	var what = { 4: _('an IPv4 address'), 6: _('an IPv6 address') }[family] || _('an IP address');

	return function(text) {
		return isIP(text, family) ? true : _('%s is not %s').format(quote(text), what);
	};
}

function endpointRule(text) {
	var why = endpointError(text);
	return why ? '%s %s'.format(quote(text), why) : true;
}

/* config.py relay_list: an endpoint whose port must be given */
function relayRule(text) {
	var verdict = endpointRule(text);

	if (verdict !== true)
		return verdict;
	if (text.charAt(0) == '[' ? text.indexOf(']:') < 0 : text.indexOf(':') < 0)
		return _("%s has no port: write host:port (tcp2udp and Mullvad's relays listen on 443, 80 or 5001)").format(quote(text));
	return true;
}

/* config.py _Builder.topic */
function topicRule(section_id, value) {
	if (!value.length || /[+#\0]/.test(value) || value.charAt(0) == '/' || value.charAt(value.length - 1) == '/')
		return _("%s is not an MQTT topic prefix (no '+', '#', leading or trailing '/')").format(quote(value));
	return true;
}

/* the number a settings field holds now (the form's value, else the saved
 * one, else the default); null while it is no valid number itself */
function currentSetting(section, section_id, name) {
	var value = section.formvalue(section_id, name);

	if (value == null)
		value = uci.get('wgrouter', section_id, name);
	if (value == null || value === '')
		value = SETTINGS[name][1];
	return (setting(value, SETTINGS[name]) === true) ? dtUfloat(value) : null;
}

/* config.py _Builder.settings: these maxima are compared with their minima */
var AT_LEAST = { backoff_max: 'backoff_base', dns_ttl_max: 'dns_ttl_min' };

function settingRule(name) {
	return function(section_id, value) {
		var verdict = setting(value, SETTINGS[name]), other, low;

		if (verdict !== true || !AT_LEAST[name])
			return verdict;
		other = AT_LEAST[name];
		low = currentSetting(this.section, section_id, other);
		if (low != null && dtUfloat(value) < low)
			return _('%s is less than %s (%s)').format(quote(num(dtUfloat(value))), other, num(low));
		return true;
	};
}

/* interfaces of /etc/config/network, those of proto wireguard apart */
function interfaces(wireguard) {
	return uci.sections('network', 'interface').filter(function(s) {
		return (s.proto == 'wireguard') == wireguard;
	}).map(function(s) { return s['.name']; });
}

return view.extend({
	/* /etc/config/network only for suggestions (interfaces, peer keys): the
	 * app's ACL does not grant it, since it holds the private keys; an
	 * administrator's session can read it */
	load: function() {
		return L.resolveDefault(uci.load('network'), null);
	},

	render: function() {
		var m, s, o, name;

		m = new form.Map('wgrouter', _('WireGuard uplinks: configuration'),
			_('wgrouter keeps each managed WireGuard peer on a working WAN uplink. Keys, endpoints and allowed IPs stay in the WireGuard interfaces of Network → Interfaces; these are wgrouter\'s own settings. Save & Apply reloads wgrouter, which leaves healthy tunnels alone.'));

		/* -------------------------------------------------- main */
		s = m.section(form.NamedSection, 'main', 'wgrouter', _('Daemon'));
		s.addremove = false;

		o = s.option(form.Flag, 'enabled', _('Enabled'), _('Start the daemon.'));
		o.default = '1';
		o.rmempty = false;

		var labels = {
			check_interval: [ _('Check interval (s)'), _('Seconds between monitor checks; decimals allowed.') ],
			handshake_timeout: [ _('Handshake timeout (s)'), _('A peer whose handshake is older and that receives nothing is suspect.') ],
			probe_timeout: [ _('Probe timeout (s)'), _('Seconds for one in-tunnel or WAN probe.') ],
			failback_holddown: [ _('Failback hold-down (s)'), _('Seconds the preferred WAN must stay healthy before the tunnels move back to it.') ],
			holddown_max: [ _('Hold-down cap (s)'), _('Longest hold-down a flapping WAN gets (each further loss within 600 s doubles it up to this).') ],
			backoff_base: [ _('Backoff base (s)'), _('First delay between recovery retries; it doubles up to the maximum.') ],
			backoff_max: [ _('Backoff maximum (s)'), _('Longest delay between recovery retries.') ],
			dns_ttl_min: [ _('DNS TTL minimum (s)'), _('Endpoint names are re-resolved no sooner than this, whatever the TTL says.') ],
			dns_ttl_max: [ _('DNS TTL maximum (s)'), _('… and no later than this.') ],
			events: [ _('Events kept'), _('Recent events kept in memory for the status page (1 to 1024).') ]
		};

		for (name in SETTINGS) {
			o = s.option(form.Value, name, labels[name][0], labels[name][1]);
			o.placeholder = SETTINGS[name][1];
			o.validate = optional(settingRule(name));
		}

		o = s.option(form.Flag, 'mwan3', _('mwan3 chooses the WAN'),
			_('Host routes go into each WAN\'s mwan3 table (set the table of each WAN below).'));
		o.default = '0';

		o = s.option(form.Flag, 'conntrack_flush', _('Flush stale conntrack entries'),
			_('Delete the conntrack entries of an endpoint\'s UDP flow when its path changes.'));
		o.default = '1';

		/* -------------------------------------------------- WANs */
		s = m.section(form.GridSection, 'wan', _('WAN uplinks'),
			_('In order of preference: the first is the primary. Drag a row by its handle to change the order. The name is the interface in Network → Interfaces (or set Interface).'));
		s.addremove = true;
		s.anonymous = false;
		s.sortable = true;
		s.nodescriptions = true;

		o = s.option(form.Value, 'interface', _('Interface'),
			_('The netifd interface, when it is not the section name.'));
		o.modalonly = true;
		interfaces(false).forEach(function(n) { o.value(n); });

		o = s.option(form.Value, 'device', _('Device'),
			_('Kernel device; by default taken from /etc/config/network (set it for a Wi-Fi client uplink, e.g. phy0-sta0).'));
		o.modalonly = true;

		o = s.option(form.Value, 'keepalive', _('Keepalive (s)'),
			_('Persistent keepalive of the peers while on this WAN (e.g. 25 on CGNAT LTE).'));
		o.placeholder = _('peer\'s own');
		o.validate = optional(function(section_id, value) { return integer(value, 0, 65535); });

		o = s.option(form.DynamicList, 'track_ip', _('Track IPs'),
			_('Health probe targets (IPv4 or IPv6, each family judged on its own), pinged through this WAN only.'));
		o.validate = optional(eachWord(ipRule()));

		o = s.option(form.DynamicList, 'dns_server', _('DNS servers'),
			_('Resolvers for endpoint names, asked through this WAN (default: the servers netifd learned on it).'));
		o.validate = optional(eachWord(ipRule()));

		o = s.option(form.Value, 'table', _('mwan3 table'),
			_('Routing table of this WAN in mwan3, with "mwan3 chooses the WAN".'));
		o.validate = optional(function(section_id, value) { return integer(value, 1, 4294967295); });

		/* -------------------------------------------------- tunnels */
		s = m.section(form.GridSection, 'tunnel', _('Managed tunnels'),
			_('WireGuard interfaces wgrouter manages; the name is the interface. Set "No host route" (nohostroute) on each in Network → Interfaces.'));
		s.addremove = true;
		s.anonymous = false;
		s.nodescriptions = true;

		o = s.option(form.Flag, 'enabled', _('Managed'));
		o.default = '1';
		o.editable = true;

		o = s.option(form.Value, 'interface', _('Interface'),
			_('The WireGuard interface, when it is not the section name.'));
		o.modalonly = true;
		interfaces(true).forEach(function(n) { o.value(n); });

		o = s.option(form.Value, 'probe', _('In-tunnel probe'),
			_('An address behind the tunnel, pinged through it; it tests the peer whose allowed IPs hold it.'));
		o.validate = optional(function(section_id, value) { return ipRule()(value); });

		/* -------------------------------------------------- peers */
		s = m.section(form.GridSection, 'peer', _('Peer extras'),
			_('More endpoints to try, TCP relays and an in-tunnel probe for one peer of a managed tunnel.'));
		s.addremove = true;
		s.anonymous = true;
		s.nodescriptions = true;

		o = s.option(form.ListValue, 'tunnel', _('Tunnel'));
		uci.sections('wgrouter', 'tunnel').map(function(t) { return t['.name']; }).concat(interfaces(true))
			.forEach(function(n, i, all) {
				if (all.indexOf(n) == i)
					o.value(n);
			});

		o = s.option(form.Value, 'public_key', _('Public key'),
			_('The peer\'s public key, as in its WireGuard peer section.'));
		uci.sections('network').forEach(function(p) {
			if (/^wireguard_/.test(p['.type']) && p.public_key)
				o.value(p.public_key, '%s (%s)'.format(p.description || p['.name'], p['.type'].substring(10)));
		});
		/* in the table: the peer's section in /etc/config/network as the
		 * daemon names it (its name, or @type[n]) and the key's start */
		o.textvalue = function(section_id) {
			var key = this.cfgvalue(section_id) || '', name = '';
			uci.sections('network').forEach(function(p) {
				if (/^wireguard_/.test(p['.type']) && p.public_key == key)
					name = p['.anonymous'] ? '@%s[%d]'.format(p['.type'],
						uci.sections('network', p['.type']).map(function(q) { return q['.name']; }).indexOf(p['.name']))
						: p['.name'];
			});
			return key ? '%h%h…'.format(name ? name + ' · ' : '', key.substring(0, 8)) : '-';
		};
		o.validate = optional(function(section_id, value) {
			return /^[A-Za-z0-9+\/]{43}=$/.test(value) ? true
				: _("%s is not a WireGuard key (44 characters of base64 ending in '=')").format(quote(value));
		});

		o = s.option(form.Value, 'section', _('Peer section'),
			_('Instead of the public key: the name of the peer\'s section in /etc/config/network.'));
		o.modalonly = true;

		o = s.option(form.DynamicList, 'endpoint', _('Extra endpoints'),
			_('host:port candidates tried after the peer\'s own endpoint, e.g. port 443 where a carrier blocks the usual port.'));
		o.validate = optional(eachWord(endpointRule));

		o = s.option(form.DynamicList, 'relay', _('TCP relays'),
			_('host:port of a WireGuard-over-TCP relay, the last resort when no UDP path works.'));
		o.validate = optional(eachWord(relayRule));

		o = s.option(form.Value, 'probe', _('In-tunnel probe'),
			_('This peer\'s own probe target, inside its allowed IPs.'));
		o.validate = optional(function(section_id, value) { return ipRule()(value); });

		/* -------------------------------------------------- MQTT */
		s = m.section(form.NamedSection, 'mqtt', 'mqtt', _('MQTT telemetry'),
			_('Publishes state, events and heartbeats (package wgrouter-mqtt).'));
		s.addremove = true;

		o = s.option(form.Flag, 'enabled', _('Enabled'));
		o.default = '0';

		o = s.option(form.Value, 'host', _('Broker'));
		o.placeholder = 'localhost';
		o.validate = optional(function(section_id, value) {
			return (isIP(value) || isHostname(value)) ? true
				: _('%s is not a host name or IP address').format(quote(value));
		});

		o = s.option(form.Value, 'port', _('Port'));
		o.placeholder = '1883';
		o.validate = optional(function(section_id, value) { return integer(value, 1, 65535); });

		o = s.option(form.ListValue, 'protocol', _('Protocol'));
		o.value('3.1.1', 'MQTT 3.1.1');
		o.value('5', 'MQTT 5');
		o.default = '3.1.1';

		o = s.option(form.Value, 'username', _('Username'));

		o = s.option(form.Value, 'password', _('Password'));
		o.password = true;

		o = s.option(form.Flag, 'tls', _('TLS'));
		o.default = '0';

		o = s.option(form.Value, 'ca_file', _('CA file'));
		o.depends('tls', '1');
		o = s.option(form.Value, 'cert_file', _('Client certificate'));
		o.depends('tls', '1');
		o = s.option(form.Value, 'key_file', _('Client key'));
		o.depends('tls', '1');

		o = s.option(form.Value, 'prefix', _('Topic prefix'));
		o.placeholder = 'wgrouter';
		o.validate = optional(topicRule);

		o = s.option(form.Value, 'identity', _('Identity'), _('Topic level of this router (default: its hostname).'));
		o.validate = optional(function(section_id, value) {
			return /[+#\/\0]/.test(value)
				? _("%s cannot be an MQTT topic level (no '+', '#', '/')").format(quote(value)) : true;
		});

		o = s.option(form.Value, 'heartbeat', _('Heartbeat (s)'));
		o.placeholder = '300';
		o.validate = optional(function(section_id, value) { return number(value, 0, false); });

		o = s.option(form.ListValue, 'qos', _('QoS'));
		o.value('0');
		o.value('1');
		o.value('2');
		o.default = '1';

		o = s.option(form.Flag, 'ha_discovery', _('Home Assistant discovery'));
		o.default = '0';

		o = s.option(form.Value, 'ha_prefix', _('Home Assistant prefix'));
		o.placeholder = 'homeassistant';
		o.depends('ha_discovery', '1');
		o.validate = optional(topicRule);

		o = s.option(form.Value, 'queue_max', _('Queue length'), _('Messages queued while the broker is away (1 to 100000).'));
		o.placeholder = '100';
		o.validate = optional(function(section_id, value) { return integer(value, 1, 100000); });

		return m.render();
	}
});
